"""Ray Tune pieces of the search: the guarded Optuna searcher, the sampler, the callback that
turns finished trials into tracked records and shows live progress."""

from __future__ import annotations

import logging
import time

import optuna
from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console
from rich.live import Live
from rich.table import Table

log = logging.getLogger(__name__)


class GuardedOptunaSearch(OptunaSearch):
    """OptunaSearch that never tells the study a trial COMPLETE unless it finished.

    With several objectives OptunaSearch gets no pruning signal, and a trial stopped by a
    scheduler, a time budget or our own divergence check would be told COMPLETE with its
    partial values. Here anything without ``status: complete`` and every objective is PRUNED,
    or FAIL on error or ``status: failed`` (a trial that reported its own failure), so the
    sampler never learns from half-trained trials.
    """

    MAX_REDRAWS = 50

    def _setup_study(self, space):
        """As OptunaSearch's, but configurations to evaluate first are enqueued only into a new
        study: a resumed search re-creates its searcher, and must not queue them again."""
        points, self._points_to_evaluate = self._points_to_evaluate, []
        super()._setup_study(space)
        self._points_to_evaluate = points
        if points and not self._ot_study.get_trials(deepcopy=False):
            for point in points:
                self._ot_study.enqueue_trial(point)

    def suggest(self, trial_id: str):
        """The sampler's proposal, never a configuration an earlier trial already trained: a
        repeat is told FAIL (user attr ``duplicate``) and the sampler asked again."""
        for _ in range(self.MAX_REDRAWS):
            params = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            seen = [t.params for t in self._ot_study.get_trials(deepcopy=False)
                    if t.number != ot_trial.number and not t.user_attrs.get("duplicate")
                    and t.state != optuna.trial.TrialState.FAIL]
            if ot_trial.params not in seen:
                return params
            ot_trial.set_user_attr("duplicate", True)
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
            del self._ot_trials[trial_id]
        log.warning("the sampler proposed only configurations already tried (%d times): ending the search",
                    self.MAX_REDRAWS)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        finished = bool(result) and result.get("status") == "complete" and all(
            result.get(m) is not None for m in metrics)
        if finished or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        failed = error or bool(result) and result.get("status") == "failed"
        state = optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED
        self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
        self._completed_trials.add(trial_id)


def error_reason(trial) -> str:
    """One line saying why a Tune trial failed: the last exception line of its error trace."""
    from pathlib import Path

    text = None
    try:
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(errors="replace")
        else:
            text = trial.get_error()
    except Exception:  # noqa: BLE001 - the reason is best effort; the status is what counts
        text = None
    from claims_search.runs.failures import failure_reason

    return failure_reason(str(text or ""))


def make_sampler(space) -> optuna.samplers.BaseSampler:
    """The space's sampler. TPE is multivariate (Optuna 5's default for several objectives)."""
    kind, seed = space.sampler.kind, space.sampler.seed
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


class TrackingCallback(Callback):
    """Finished trials -> TrialRecords in the tracker's outbox (then a best-effort MLflow sync),
    and a live table: trials done / running / pending, best so far per task, compute spent."""

    def __init__(self, tracker, space, *, progress: bool = True, total: int = 0, state=None, concurrency: int = 0,
                 waiting=None):
        self.tracker, self.space, self.total, self.state = tracker, space, total, state
        # On an autoscaling cluster: pending trials -> "waiting for N node(s) of T" (capacity.waiting_for).
        self.concurrency, self.waiting = concurrency, waiting
        self.started = time.monotonic()
        self.compute = 0.0
        self.best: dict[str, float] = {}
        self.done = self.pruned = self.failed = 0
        self.running: set[str] = set()
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=2, transient=False) if (
            progress and self.console.is_terminal) else None
        if self.live:
            self.live.start()

    def __getstate__(self):  # Tune pickles its run config: leave the live display behind
        return {k: v for k, v in self.__dict__.items() if k not in ("live", "console")}

    def __setstate__(self, state):
        self.__dict__.update(state, live=None, console=Console(stderr=True))

    def _record(self, trial, result: dict | None, failed: bool = False) -> None:
        from claims_search.search.trial_records import records_from_result

        result = dict(result or {})
        if failed:
            result["status"] = "failed"
            result["reason"] = error_reason(trial)
        records = records_from_result(trial.trial_id, result, self.space.task_names, self.space)
        for r in records:
            self.tracker.log_trial(r, sync=False)
            if r.status == "complete":
                self.best[r.task] = max(self.best.get(r.task, float("-inf")), r.metric)
        status = records[0].status if records else "failed"
        self.done += status == "complete"
        self.pruned += status == "pruned"
        self.failed += status == "failed"
        # A pruned trial is charged what it trained: its pretraining so far.
        total = result.get("total_cost") or (result.get("pretrain_cost") if status == "pruned" else None)
        if total:
            import json

            from claims_search.search.trial import cost_value

            self.compute += cost_value(json.loads(total), "device_seconds") or 0.0
        self.running.discard(trial.trial_id)
        self.tracker.sync()
        if self.state is not None:  # the outbox and the study survive losing this node's disk
            try:
                self.state.push()
            except Exception as e:  # noqa: BLE001 - storage blips must not stop the search
                log.warning("search state not mirrored to %s (%s); next trial retries", self.state.mirror, e)
        reason = f" ({result['reason']})" if status == "failed" and result.get("reason") else ""
        self._show(f"trial {trial.trial_id}: {status}{reason}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._show(f"trial {trial.trial_id}: started")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, trial.last_result, failed=True)

    def on_experiment_end(self, trials, **info):
        if self.live:
            self.live.stop()

    def _show(self, event: str) -> None:
        finished = self.done + self.pruned + self.failed
        pending = max(self.total - finished - len(self.running), 0)
        elapsed = time.monotonic() - self.started
        best = ", ".join(f"{t} {self.space.metric}={v:.3f}" for t, v in sorted(self.best.items())) or "-"
        # Trials Tune may run now but that have not started: on an autoscaling cluster, nodes to come.
        unstarted = min(self.concurrency or pending, pending + len(self.running)) - len(self.running)
        note = self.waiting(unstarted) if self.waiting else None
        if not self.live:
            log.info("%s | done %d (pruned %d, failed %d) running %d pending %d%s | best %s | compute %.0f device-s "
                     "| %.0f s", event, finished, self.pruned, self.failed, len(self.running), pending,
                     f" ({note})" if note else "", best, self.compute, elapsed)
            return
        table = Table(title=f"search {self.tracker.experiment_name}", show_header=True)
        for col in ("done", "pruned", "failed", "running", "pending", "best so far", "compute (device-s)", "elapsed"):
            table.add_column(col)
        table.add_row(str(self.done), str(self.pruned), str(self.failed), str(len(self.running)),
                      f"{pending} ({note})" if note else str(pending),
                      best, f"{self.compute:.0f}", f"{elapsed:.0f} s")
        self.live.update(table)
