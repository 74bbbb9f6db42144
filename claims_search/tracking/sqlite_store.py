"""A local SQLite MLflow store whose schema migration was cut off, finished so it opens again.

MLflow creates a SQLite store's schema by running its alembic migrations, and SQLite's ALTER
TABLE goes through a scratch copy (``_alembic_tmp_<table>``: create, copy, drop the old table,
rename). A process killed inside one (a search whose Ray instance died under it while its first
results went to MLflow) leaves the scratch table behind, and from then on MLflow refuses to open
the store ("table _alembic_tmp_tags already exists"). The results are safe in the search's outbox;
this puts the store back in the state alembic expects, so the cut step runs again.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)
SCRATCH = "_alembic_tmp_"


def path_of(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def finish_cut_migration(uri: str) -> list[str]:
    """Undo the half of an alembic step a killed process left in the SQLite store at ``uri``:
    drop each scratch table whose original is still there (the copy never replaced it), rename a
    scratch table whose original is gone back to the original's name (the copy was complete).
    Returns the tables touched; an empty list when there was nothing to do."""
    path = path_of(uri)
    if path is None or not path.is_file():
        return []
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        touched = []
        for scratch in sorted(t for t in tables if t.startswith(SCRATCH)):
            original = scratch[len(SCRATCH):]
            if original in tables:
                con.execute(f'DROP TABLE "{scratch}"')
            else:
                con.execute(f'ALTER TABLE "{scratch}" RENAME TO "{original}"')
            touched.append(original)
        con.commit()
    finally:
        con.close()
    if touched:
        log.warning("MLflow store %s: a schema migration had been cut off (table(s) %s); finished it",
                    path, ", ".join(touched))
    return touched
