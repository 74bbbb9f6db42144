"""Tracking: the MLflow edge (the only place mlflow is imported): runs, frontiers, the outbox,
and the chosen model packaged as an MLflow model that carries its code and requirements.
Imports ``results`` and below."""
