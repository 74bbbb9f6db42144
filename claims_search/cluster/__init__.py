"""Cluster: what a Ray cluster can provide (its autoscaler's node types) and the Ray Job
Submission edge that ``submit`` uses.
Imports ``tracking`` and below."""
