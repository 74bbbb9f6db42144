"""Names: one rule for every option that takes "a file or a shipped name" (``--space``,
``--task``), and the name a search gets when the user gives none.

The value is a file when such a file exists (a directory never counts: ``make demo`` writes a
``demo/`` folder beside the shipped ``demo`` space); otherwise it is a shipped name. When both a
file and a shipped name match, one line on stderr says which was used.
"""

from __future__ import annotations

import datetime as dt
import secrets
import sys
from pathlib import Path


def resolve(value: str | Path, shipped: Path | None, what: str) -> Path | None:
    """The file ``value`` names, else the ``shipped`` file, else None.

    ``shipped`` is where the shipped ``what`` of that name would be (it may not exist).
    """
    own = Path(value)
    has_shipped = shipped is not None and shipped.is_file()
    if own.is_file():
        if has_shipped and own.resolve() != shipped.resolve():
            print(f"claims-search: note: {what} {str(value)!r}: using the file {own}, not the shipped {what} "
                  f"of that name ({shipped})", file=sys.stderr)
        return own
    return shipped if has_shipped else None


def generated_name(space: str, now: dt.datetime | None = None, token: str | None = None) -> str:
    """A name for a search the user did not name: ``<space>-<UTC time>-<6 hex>``. The random
    part keeps two searches started in the same second (two teams, one cluster) apart: they
    would otherwise share a name, and the second would be refused as an existing search."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{space}-{stamp}-{token or secrets.token_hex(3)}"
