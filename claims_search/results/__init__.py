"""Results: trial records, each task's Pareto frontier of metric against cost, the paired
recommendation rule, the per-task summary, prices per device kind and the frontier plots.
Imports ``runs`` and below; plain Python, no Ray or MLflow."""
