"""TracIn: how much each training sample influenced each test prediction, checkpoint by checkpoint.

Definition (Pruthi et al. 2020, TracInCP)::

    score_c(i, j) = lr_c * sim(g_c(i), g_c(j))          g_c(x) = d loss(x; theta_c) / d theta_S
    score(i, j)   = sum_c score_c(i, j)

for training sample ``i``, test sample ``j``, saved checkpoint ``c`` (with the learning rate ``lr_c`` in force when it
was saved) and a parameter subset ``S``. ``loss`` is the cross-entropy of one sample (a sum-reduced loss, so a
per-example gradient does not depend on the batch it was computed in). ``sim`` is the dot product or the cosine
(each per-example gradient normalised over the whole subset ``S``, per checkpoint).
:class:`~.scores.InfluenceScores` keeps the matrix of every checkpoint (the book analyses each epoch) next to their
sum, with id tables linking every row and column back to its sample (language, pair id, label, ...).

Parameter subsets (``params``):

* ``"all"``: every parameter. The word embeddings are handled sparsely: a sample's gradient on them has at most one
  row per token, and two samples interact only through the vocabulary rows they share.
* ``"last_layers:N"``: the last ``N`` encoder layers and the classification head.
* ``"classifier"``: the head alone, i.e. every parameter outside the embedding block and the encoder layers (BERT:
  the pooler and ``classifier``; XLM-R: ``classifier.dense`` and ``classifier.out_proj``).
* ``"embeddings"``: the word embeddings alone ("TracIn-WE", Yeh et al. 2022).
* ``"re:<regex>"``: the parameters whose name matches the regular expression (``re.search``).

Encoder layers are found generically, as the ``ModuleList`` named ``encoder.layer`` (BERT, XLM-R, ...) or ``layers``
(:func:`helpers.models.encoder_layers`). :func:`~.spec.select_parameters` shows what a spec selects on a given model.

**Default for the book: ``"last_layers:1"``** (:data:`~.subsets.DEFAULT_PARAMS`), the last encoder layer and the head.

* Cost: only that layer is back-propagated and compared. For multilingual-e5-small (the embedded model) that is
  1.9M of 118M parameters (33M with a 30k-token trimmed vocabulary); for XLM-R base 7.7M of 278M. The whole model
  (``"all"``: 21M dense parameters per sample for e5-small, plus the sparse word embeddings) is affordable on CPU
  too: on the default run (1,000 training x 175 test samples, 3 checkpoints) it took 2.3x the time of the
  fine-tuning that produced the checkpoints, both on one thread, with a peak of 7.6 GiB (``benchmarks/tracin.py
  --mode full``, README); the largest cost is the products of per-example gradients, ``2 n_test P`` operations per
  training sample and checkpoint (7.4 GFLOP here), then back-propagation and forming the gradients.
* Bias: word-embedding TracIn (``"embeddings"``) can only connect samples that share subword tokens, so across
  scripts (e.g. Russian and English) it sees little more than ``<s>``, ``</s>`` and punctuation: it structurally
  under-states exactly the cross-lingual influence the book studies. The last layer sees every sample through the
  same representation space, whatever its script. The head alone (``"classifier"``) is the cheapest option but
  suffers from the cancellation effect described by Yeh et al. (its gradient is rank one per sample).

The package, one concern per module (how the scores are computed: :mod:`.engine`):

* :mod:`.subsets`: the ``params`` grammar and :data:`~.subsets.DEFAULT_PARAMS` (pure Python, no torch);
* :mod:`.scores`: :class:`~.scores.InfluenceScores` / :class:`~.scores.SelfInfluence`, their files, and
  :func:`~.scores.top_rows`, the one definition of the top-k (numpy and pandas only: the analyses load no torch);
* :mod:`.spec`: :class:`~.spec.Checkpoint` and :func:`~.spec.select_parameters` (what a spec selects on a model);
* :mod:`.memory`, :mod:`.kernels`, :mod:`.grads`: reused buffers, the per-module per-example gradient and product
  kernels, and the examples, batches, hooks and gradient banks built on them;
* :mod:`.engine`: :class:`~.engine.TracIn` and its :class:`~.engine.Plan`;
* :mod:`.precision`: bf16 only where it passes the accuracy gates against fp32 (:func:`~.precision.choose_dtype`);
* :mod:`.shard`: the shards of a run over several processes and their merge (the processes: ``python -m
  helpers.compute.tracin``).

A fine-tuning run's scores, as the TracIn stages compute them: :func:`helpers.compute.tracin.score_finetune`.

This file imports nothing, so that importing :mod:`.subsets` or :mod:`.scores` does not load torch.
"""
