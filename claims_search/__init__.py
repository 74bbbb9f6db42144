"""claims-search: find the right Transformer size per task on medical claims."""

__version__ = "0.1.0"
