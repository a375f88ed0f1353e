"""Neuron-level probing and overlap statistics for the cross-lingual alignment chapter (after Wang, Minervini & Ponti
2024, "Probing the Emergence of Cross-lingual Alignment during LLM Training"). `probing.select_neurons` picks, for one
language and attribute, the k neurons of a layer's word representations that carry the most information about the
attribute: greedy forward selection by dev-split normalised mutual information (Torroba Hennigen et al. 2020) under a
closed-form Gaussian probe. `overlap` compares such neuron sets across languages (the overlap rate |A ∩ B| / k, with a
hypergeometric chance interval for two random k-subsets of d neurons) and across checkpoints (same-language stability,
the integrity check of the digest's §10.3 / A.1), and correlates overlap with transfer scores (Pearson and Spearman with
percentile-bootstrap intervals). Pure numpy/scipy/pandas: everything runs on a CPU in well under a second per probe.
"""
