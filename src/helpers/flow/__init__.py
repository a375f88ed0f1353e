"""The machinery of stages, below every stage it runs: it never imports a compute stage or a chapter by name.

* :mod:`.stage`: what a stage is (:class:`~.stage.Stage`) and where the declarations are found;
* :mod:`.graph`: a study's stage instances, their identities, in run order;
* :mod:`.fingerprint`: what makes a committed stage stale (code actually reached, notebook, packages, local inputs);
* :mod:`.store`: committed folders, their records and manifests, states, locks;
* :mod:`.context`: the notebook side (``begin``, ``commit``);
* :mod:`.cells`: each notebook's ``parameters`` cell, generated from the parameter table;
* :mod:`.feasible`: what the chosen model, corpus and machine allow, checked before any work;
* :mod:`.runner`: papermill over the graph, publishing the pages, building the book.
"""
