"""The search driver's own state, and where it survives: the tracking outbox, ``search.json``
(which space and data the search started with) and the Optuna study.

The driver works on a local folder (SQLite and appends need a real disk). With ``--storage`` a
local path that folder is ``<storage>/<search>`` itself. With a URI it is
``$CLAIMS_SEARCH_STATE_DIR/<search>`` (default ``~/.cache/claims-search/runs/<search>``),
mirrored to ``<storage>/<search>/state/`` after every finished trial, so that a head that lost
its disk (a restarted head pod) resumes from storage alone: ``restore`` copies back what the
local folder lacks.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from claims_search import storage as st

# Relative to the state folder; the outbox folder is the Tracker's.
FILES = ("search.json", "outbox/outbox.jsonl", "outbox/sent.jsonl", "outbox/failed.jsonl",
         "outbox/set_aside.jsonl", "optuna.db")


@dataclass(frozen=True)
class SearchState:
    """The local state folder of one search and, on remote storage, its mirror."""

    local: Path
    mirror: str | None = None

    @classmethod
    def for_search(cls, storage: str, name: str) -> "SearchState":
        """Where search ``name`` under ``storage`` keeps its state."""
        if st.is_local(storage):
            return cls(st.local_path(storage) / name)
        root = Path(os.environ.get("CLAIMS_SEARCH_STATE_DIR", "~/.cache/claims-search/runs")).expanduser()
        return cls(root.resolve() / name, st.join(storage, name, "state"))

    @property
    def outbox(self) -> Path:
        return self.local / "outbox"

    @property
    def optuna_db(self) -> Path:
        return self.local / "optuna.db"

    def started(self) -> bool:
        """Whether this search has written any state, here or on storage."""
        return (self.local / "search.json").exists() or self.outbox.exists() or (
            self.mirror is not None and st.exists(st.join(self.mirror, "search.json")))

    def restore(self) -> list[str]:
        """Copy back from storage every state file the local folder lacks; their names."""
        if self.mirror is None:
            return []
        got = []
        for rel in FILES:
            src, dst = st.join(self.mirror, rel), self.local / rel
            if not dst.exists() and st.exists(src):
                st.download(src, dst)
                got.append(rel)
        return got

    def push(self) -> None:
        """Mirror the local state files to storage (a consistent copy of the SQLite study)."""
        if self.mirror is None:
            return
        for rel in FILES:
            src = self.local / rel
            if not src.exists():
                continue
            if src.suffix == ".db":
                st.write_bytes(st.join(self.mirror, rel), _sqlite_snapshot(src))
            else:
                st.write_bytes(st.join(self.mirror, rel), src.read_bytes())


def _sqlite_snapshot(db: Path) -> bytes:
    """The bytes of a consistent copy of a live SQLite database (the backup API, not a raw copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / db.name
        src, dst = sqlite3.connect(db), sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        return copy.read_bytes()
