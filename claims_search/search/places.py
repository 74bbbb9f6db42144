"""Where one search's things live: its folder on ``--storage`` (Tune's experiment, the LightGBM
baselines, each trial's checkpoints) and its driver state (``state.SearchState``: outbox,
``search.json``, Optuna study, mirrored to storage when storage is a URI).

The driver asks this object for every path of a search and whether the search exists, and
never joins storage paths itself, so that the layout is written down once:

```
<storage>/<search>/
  tune/<experiment>/   Ray Tune's experiment (a search started before experiments had their own
                       id: <storage>/<search>/tune itself is the experiment)
  baseline/<task>/     LightGBM model and tuning predictions
  trials/<trial>/      each trial's checkpoints, Ray Train state and final.json
  state/               the driver state's mirror (URI storage only; local storage keeps the
                       state in <storage>/<search> itself)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from claims_search import storage as st
from claims_search.errors import ClaimsSearchError
from claims_search.search.state import SearchState

# The experiment name of a search started before each search had its own Tune experiment id.
LEGACY_EXPERIMENT = "tune"


@dataclass(frozen=True)
class SearchPlaces:
    """One search's places on storage and its driver state (plain data: Tune pickles it with the
    callback that pushes the state after every trial)."""

    storage: str
    name: str
    state: SearchState

    @classmethod
    def of(cls, storage: str, name: str) -> SearchPlaces:
        """The places of search ``name`` under ``storage`` (a path or a URI); touches nothing."""
        return cls(storage, name, SearchState.for_search(storage, name))

    def path(self, *parts: str) -> str:
        """``<storage>/<search>/<parts...>``, a local path or a URI."""
        return st.join(self.storage, self.name, *parts)

    @property
    def root(self) -> str:
        """``<storage>/<search>``: what the refusals name."""
        return self.path()

    @property
    def baseline(self) -> str:
        """The LightGBM baselines' folder (``<task>/`` under it)."""
        return self.path("baseline")

    @property
    def trials(self) -> str:
        """The trials' folder (``<trial>/`` under it: checkpoints, Train state, ``final.json``)."""
        return self.path("trials")

    def tune_root(self, experiment: str) -> str:
        """Tune's ``storage_path`` for ``experiment``: ``<storage>/<search>/tune``, so that the
        experiment is ``tune/<experiment>``; for the legacy experiment ``tune``, the search's
        folder itself (its experiment was ``<storage>/<search>/tune``)."""
        return self.path(*(("tune",) if experiment != LEGACY_EXPERIMENT else ()))

    def tune_storage(self, experiment: str, *, multi_node: bool) -> tuple[str, object | None]:
        """``(storage_path, storage_filesystem)`` for Tune's ``RunConfig`` (``storage.tune_storage``
        of :meth:`tune_root`: a local path on a multi-node cluster is refused there)."""
        return st.tune_storage(self.tune_root(experiment), multi_node=multi_node)

    @property
    def local(self) -> Path:
        """The driver state's local folder."""
        return self.state.local

    @property
    def mirror(self) -> str | None:
        """The driver state's mirror on storage (None when storage is a local path)."""
        return self.state.mirror

    @property
    def outbox(self) -> Path:
        """The tracking outbox's folder."""
        return self.state.outbox

    @property
    def optuna_db(self) -> Path:
        """The Optuna study's SQLite file."""
        return self.state.optuna_db

    def started(self) -> bool:
        """Whether this search exists: Tune's folder on storage (both the current and the legacy
        layout have ``<storage>/<search>/tune``) or any driver state, here or mirrored."""
        return st.exists(self.path("tune")) or self.state.started()

    def check_resume(self, resume: bool) -> None:
        """Refuse, in one line, to start a search that exists or to resume one that does not."""
        started = self.started()
        if started and not resume:
            raise ClaimsSearchError(f"{self.root}: a search named {self.name!r} exists; pass "
                                    f"--resume to finish it or choose another --name")
        if resume and not started:
            raise ClaimsSearchError(f"{self.root}: nothing to resume for search {self.name!r}")

    def open(self, resume: bool) -> list[str]:
        """Make the local state folder; on resume, copy back from the mirror what it lacks (a head
        that lost its disk). The names of the files restored."""
        self.local.mkdir(parents=True, exist_ok=True)
        return self.state.restore() if resume else []

    def push(self) -> None:
        """Mirror the driver state to storage (nothing to do on local storage)."""
        self.state.push()
