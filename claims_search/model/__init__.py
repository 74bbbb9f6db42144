"""Model: the named size table, the Transformer, packed batches, the training loop, its cost
meter and its memory estimate. Plain torch, no Ray or MLflow.
Imports ``data`` and the base modules."""
