"""One rule for every option that takes "a file or a shipped name" (``--space``, ``--task``).

The value is a file when such a file exists (a directory never counts: ``make demo`` writes a
``demo/`` folder beside the shipped ``demo`` space); otherwise it is a shipped name. When both a
file and a shipped name match, one line on stderr says which was used.
"""

from __future__ import annotations

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
