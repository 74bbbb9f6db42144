"""Search: the search space (YAML, validated on load), the compute-aware objective, one trial
(pretrain once, fine-tune per task), the size policy and its Ray edge, and the driver.
Imports every stage below it (``cluster``, ``tracking``, ``results``, ``runs``, ``model``, ``data``)."""
