"""Sub-commands of the `claims-search` CLI, one module each (see claims_search/cli.py)."""
