"""What a task is once read: an ACES config or a MEDS label table. Its own module so that both
readers (``labels``: ACES; ``label_tables``: label tables) build it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Task:
    """A task: its name, the YAML text it came from, and the parsed ACES config; or, for a
    precomputed MEDS label table (claims_search/data/label_tables.py), no config and its rows."""

    name: str
    source: str  # the file (or label-table folder) it was read from, for messages
    text: str  # an ACES config's YAML; a label table's name and content hash
    config: object  # aces.config.TaskExtractorConfig; None for a label table
    table: pl.DataFrame | None = None  # a label table's subject_id, prediction_time, boolean_value
