"""Runs: one pretraining or fine-tuning job on a worker, its Ray Train edge, the LightGBM
baseline, held-out scoring and the per-sample prediction files (MEDS prediction schema).
Imports ``model``, ``data`` and the base modules."""
