"""The search driver: a space's trials on Ray Tune + Optuna, results into the tracking outbox.

Flow: check everything (space, cache, tasks, tracking server, Ray address, cluster resources)
before any trial starts → the LightGBM baseline once per task (a Ray task) → the trials
(`trial.run_trial`, a Tune function trainable whose training runs on Ray Train workers) →
per-task frontier, recommendation, plots and registry (`tracking.Tracker.publish`).

Where a search's files live (Tune's experiment, baselines, trials) and its own state (outbox,
``search.json``, the Optuna study in ``optuna.db``) is one ``places.SearchPlaces``; the state is
under ``--storage`` when it is a path, else a local working copy mirrored to
``<storage>/<search>/state`` after every trial. ``resume=True`` restores it (from
storage when the head lost its disk) and the Tune experiment, and finishes the search without
re-running finished trials.

A search in which no Transformer trial completed is a failure: ``SearchFailed`` (exit 2) with
how many trials failed or were pruned and the first reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claims_search.errors import ClaimsSearchError
from claims_search.results.frontier import TrialRecord
from claims_search.search.places import SearchPlaces
from claims_search.search.trial import TrialContext, cost_value, run_trial
from claims_search.search.trial_records import _extras, device_kind, records_from_result

log = logging.getLogger(__name__)


class SearchFailed(ClaimsSearchError):
    """No Transformer trial completed: the search produced no answer."""


@dataclass(frozen=True)
class SearchResult:
    """What a finished search returns: the recommendation per task (None where nothing was
    usable) and how its trials ended (counted per trial, over every task)."""

    recommendations: dict[str, Any]
    complete: int
    pruned: int
    failed: int
    first_reason: str | None = None
    train_share: float | None = None  # training loop time / trial wall time, complete trials
    held_out: dict[str, dict] = field(default_factory=dict)  # task -> role -> held-out metrics
    time_shares: dict[str, float] = field(default_factory=dict)  # phase -> share of trial wall time
    policy_line: str | None = None  # the ladder policy's last word: why it stopped (None: another sampler)

    def summary(self) -> str:
        """One line: how the trials ended, the first failure's reason, and the share of the
        trials' wall time spent in the training loop."""
        line = f"{self.complete} trial(s) complete, {self.failed} failed, {self.pruned} pruned"
        if self.first_reason:
            line += f"; first failure: {self.first_reason}"
        if self.train_share is not None:
            line += f"; {self.train_share:.0%} of trial wall time in the training loop"
        return line

    def time_line(self) -> str | None:
        """Where the complete trials' wall time went, largest share first (None untimed)."""
        if not self.time_shares:
            return None
        parts = sorted(self.time_shares.items(), key=lambda kv: -kv[1])
        return "trial wall time: " + ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in parts if v >= 0.005)


@dataclass(frozen=True)
class SearchRequest:
    """What `claims-search search` asks for."""

    space: str
    data: str
    tracking_uri: str
    name: str
    storage: str = "runs"
    address: str | None = None
    resume: bool = False
    progress: bool = True
    resource_check: bool = True  # False: trust the space (--no-resource-check)
    cluster_config: str | None = None  # a launcher YAML naming the cluster's node types


def run_search(req: SearchRequest) -> SearchResult:
    """Run (or resume) a search; raise ``SearchFailed`` when no Transformer trial completed.

    The steps: resolve and check the inputs (nothing needs the cluster yet) → connect (the
    cluster's checks, then the search's state and tracker opened) → the LightGBM baselines →
    the space's sampler or size policy through Ray Tune → publish each task's summary and its
    held-out confirmation → the outcome once Ray is shut down."""
    _quiet()
    inputs = _resolve(req)
    with _ray_session(req) as ray:
        run = _connect(inputs, ray)
        _baselines(run)
        policy_line = _run_policy(run)
        recs, confirmed = _publish(run)
    return _finish(run, recs, confirmed, policy_line)


@dataclass(frozen=True)
class Inputs:
    """A search's inputs, resolved and checked before Ray starts."""

    req: SearchRequest
    space: Any  # space.Space, loaded once: trials get this object, never the path
    data: str  # the prepared cache, normalized (a local path or a URI)
    cache: Any  # data.cache.Cache, opened from a local copy
    places: SearchPlaces


@dataclass(frozen=True)
class Run(Inputs):
    """A connected search: its inputs, the cluster, the tracker and where Tune keeps its files."""

    ray: Any
    tracker: Any  # tracking.tracker.Tracker over the search's outbox
    concurrency: int
    waiting: Callable[[int], str | None] | None  # autoscaling: what unstarted trials wait for
    experiment: str  # the search's own Tune experiment name (``tune``: a legacy search)
    tune_path: str  # Tune's storage_path
    tune_fs: Any  # and its storage_filesystem (None: Ray resolves the path itself)


def _resolve(req: SearchRequest) -> Inputs:
    """Everything checked that needs no cluster, before anything is written: the space, the
    prepared cache and its tasks (both classes in the tuning split), the tracking server, and
    that the search exists exactly when ``--resume`` says it does."""
    from claims_search import storage as st
    from claims_search.cluster.jobs import probe_tracking
    from claims_search.data.cache import Cache
    from claims_search.runs.training import check_task
    from claims_search.search.space import load_space
    from claims_search.tracking.tracker import check_uri, reachable

    space = load_space(req.space)
    data = st.require(req.data, "prepared cache")
    cache = Cache.open(st.localize(data))
    missing = [t for t in space.task_names if t not in cache.tasks]
    if missing:
        raise ClaimsSearchError(f"{req.data}: task(s) {missing} not in the prepared cache (has {cache.tasks}); "
                                f"run `claims-search prepare --task ...` for them")
    for task in space.task_names:
        check_task(cache, req.data, task, ("tuning",))
    check_uri(req.tracking_uri)
    probe_tracking(req.tracking_uri)  # an http server that refuses our Host header (403) fails here
    if not reachable(req.tracking_uri):
        raise ClaimsSearchError(f"tracking server {req.tracking_uri} is unreachable (or refuses this host)")
    places = SearchPlaces.of(req.storage, req.name)
    places.check_resume(req.resume)
    return Inputs(req, space, data, cache, places)


@contextmanager
def _ray_session(req: SearchRequest):
    """Ray, connected for the body and shut down after it. An error of Ray's own machinery (a
    dead head, a lost GCS) becomes one line saying how to finish the search: finished trials
    are on storage."""
    ray = _init_ray(req.address)
    try:
        yield ray
    except Exception as e:
        if not _from_ray(e):
            raise
        raise ClaimsSearchError(
            f"search {req.name}: Ray failed mid-search ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
            f"finished trials are kept; finish it with: claims-search search --space {req.space} --data {req.data} "
            f"--name {req.name} --storage {req.storage} --resume") from None
    finally:
        ray.shutdown()


def _connect(inputs: Inputs, ray) -> Run:
    """The checks that need the cluster (nothing is written before they pass), then the search's
    state opened (restored from storage on resume), its Tune experiment named (``_same_search``)
    and its tracker over the outbox."""
    from claims_search.tracking.tracker import Tracker

    req, space, places = inputs.req, inputs.space, inputs.places
    concurrency, waiting = _fit(space, req, ray)
    multi_node = sum(n["Alive"] for n in ray.nodes()) > 1
    if restored := places.open(req.resume):
        log.info("search %s: restored %s from %s", req.name, ", ".join(restored), places.mirror)
    experiment = _same_search(places.local, space, inputs.data, req.resume)
    tune_path, tune_fs = places.tune_storage(experiment, multi_node=multi_node)
    places.push()
    tracker = Tracker(req.tracking_uri, req.name, places.outbox, metric=space.metric, cost=space.cost)
    tracker.open_store()  # a local store's schema built before trials run, not during
    return Run(**vars(inputs), ray=ray, tracker=tracker, concurrency=concurrency, waiting=waiting,
               experiment=experiment, tune_path=tune_path, tune_fs=tune_fs)


def _publish(run: Run) -> tuple[dict[str, Any], dict[str, dict]]:
    """Each task's summary computed in plain Python (``summary.py``: frontier, paired rule,
    plots), recorded by the tracker; then the held-out confirmation. ``(recommendations,
    confirmed)``."""
    from claims_search.results.summary import for_space

    tracker = run.tracker
    recs = tracker.publish(for_space(tracker.records(), run.space, tracker.outbox_dir / "artifacts"))
    return recs, _confirm(run, recs)


def _finish(run: Run, recs: dict[str, Any], confirmed: dict[str, dict], policy_line: str | None) -> SearchResult:
    """The state mirrored a last time, results MLflow did not take named, and the outcome;
    ``SearchFailed`` when no Transformer trial completed."""
    req, places, tracker = run.req, run.places, run.tracker
    places.push()
    if tracker.pending():
        log.warning("MLflow unreachable: %d result(s) wait in %s; deliver them later with `claims-search sync "
                    "--name %s --storage %s --tracking-uri %s`", len(tracker.pending()), places.outbox, req.name,
                    req.storage, req.tracking_uri)
    result = dataclasses.replace(_outcome(recs, tracker.records(), confirmed), policy_line=policy_line)
    if result.complete == 0:
        raise SearchFailed(f"search {req.name}: no Transformer trial completed ({result.summary()})")
    return result


HELD_OUT = "held_out"


def _confirm(run: Run, recs: dict[str, Any]) -> dict[str, dict]:
    """Score the recommended model, the best Transformer and the baseline of each task ONCE on
    the held-out split, which nothing read before; ``{task: {role: {trial_id, metrics,
    splits_read} | {trial_id, error}}}`` (``splits_read``: what the scoring's cache served),
    also queued for MLflow. Runs as Ray tasks where Train workers run."""
    jobs = {}
    for task, rec in recs.items():
        if rec is None:
            continue
        roles = {"recommended": rec.record, "best": rec.best, "baseline": rec.baseline}
        for role, r in roles.items():
            if r is not None and r.checkpoint:
                jobs[(task, role)] = r
    if not jobs:
        return {}
    ray, data, tracker, b = run.ray, run.data, run.tracker, run.space.budget

    # A Transformer is scored where a trial's worker runs, with what one holds (its GPU: a 101M
    # forward pass over a real held-out split takes hours on one CPU thread); LightGBM on CPUs.
    @ray.remote(num_cpus=b.cpus_per_worker, num_gpus=b.gpus_per_worker, resources=dict(b.worker_resources) or None)
    def score(task: str, location: str, is_baseline: bool) -> dict:
        from claims_search.errors import ClaimsSearchError
        from claims_search.runs import scoring
        from claims_search.runs.worker import open_cache

        try:
            cache = open_cache(data)
            return {"metrics": scoring.score(cache, task, HELD_OUT, location, is_baseline),
                    "splits_read": cache.splits_read()}
        except ClaimsSearchError as e:  # e.g. one class only in a small held-out split
            return {"error": str(e)}

    # A Transformer's checkpoint is the folder holding meta.json and state.pt. A model in two
    # roles (the recommended one is often the best) is scored once.
    refs: dict[tuple[str, str], Any] = {}
    for (task, _), r in jobs.items():
        if (task, r.checkpoint) not in refs:
            refs[(task, r.checkpoint)] = (score.options(num_gpus=0) if r.is_baseline else score).remote(
                task, r.checkpoint, r.is_baseline)
    got = dict(zip(refs, ray.get(list(refs.values()))))
    out: dict[str, dict] = {}
    for (task, role), r in jobs.items():
        out.setdefault(task, {})[role] = {"trial_id": r.trial_id, **got[(task, r.checkpoint)]}
    for task, roles in out.items():
        tracker.log_confirmation(task, HELD_OUT, roles)
    tracker.sync()
    return out


def _outcome(recs: dict[str, Any], records: list[TrialRecord], confirmed: dict | None = None) -> SearchResult:
    """Count how the Transformer trials ended (one status per trial, whatever the task)."""
    status: dict[str, TrialRecord] = {}
    for r in records:
        if not r.is_baseline:
            status.setdefault(r.trial_id, r)
    ends = [r.status for r in status.values()]
    reasons = sorted((r.trial_id, r.tags.get("reason")) for r in status.values()
                     if r.status == "failed" and r.tags.get("reason"))
    timed = [r.extras for r in status.values() if r.status == "complete" and "trial_wall_s" in r.extras]
    wall = sum(e["trial_wall_s"] for e in timed)
    share = sum(e["train_loop_s"] for e in timed) / wall if wall > 0 else None
    return SearchResult(recs, ends.count("complete"), ends.count("pruned"), ends.count("failed"),
                        reasons[0][1] if reasons else None, share, confirmed or {}, time_shares(timed, wall))


def time_shares(timed: list[dict], wall: float) -> dict[str, float]:
    """Each phase's share of the trials' summed wall time (``time_<phase>_s`` extras); the
    fine-tunings pooled, and ``other`` for what no phase accounts for (the trial's start and
    its result's way back to Tune)."""
    if wall <= 0:
        return {}
    total: dict[str, float] = {}
    for e in timed:
        for k, v in e.items():
            if k.startswith("time_") and k.endswith("_s"):
                phase = k[len("time_"):-len("_s")]
                phase = "finetune" if phase.startswith("finetune_") else phase
                total[phase] = total.get(phase, 0.0) + v
    if not total:
        return {}
    total["other"] = max(0.0, wall - sum(total.values()))
    return {k: v / wall for k, v in total.items()}


def _fit(space, req: SearchRequest, ray):
    """The concurrency to use and, on an autoscaling cluster, how to say what pending trials wait
    for. An autoscaling cluster is checked against the node types it can add (a trial that can
    never fit is refused, naming what it needs); a fixed one against the nodes up now."""
    from functools import partial

    from claims_search.cluster import autoscaler, capacity
    from claims_search.search.space import validate_against_cluster

    types = autoscaler.node_types(req.cluster_config) if req.resource_check or req.cluster_config else None
    if not req.resource_check:
        b = space.budget
        return max(1, min(b.concurrency, b.trials)), (partial(capacity.waiting_for, space, types) if types else None)
    if types is None:
        return validate_against_cluster(space, ray.cluster_resources()), None
    if not types:  # autoscales, node types unknown (warned): trust the space
        b = space.budget
        return max(1, min(b.concurrency, b.trials)), None
    concurrency = capacity.check_space(space, types)
    log.info("search %s: the cluster autoscales (%s); up to %d trial(s) at once", req.name,
             "; ".join(t.describe() for t in types), concurrency)
    return concurrency, partial(capacity.waiting_for, space, types)


def _probe_ray(address: str) -> None:
    """Fail in seconds, not minutes, when nothing answers at a ``host:port`` Ray address
    (ray.init itself retries an unreachable GCS for minutes)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" or a name Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ClaimsSearchError(f"Ray at {address}: cannot connect ({e.strerror or e}); is the cluster up?") from None


def _from_ray(e: BaseException) -> bool:
    """An error raised by Ray's own machinery (not by our code inside a trial)."""
    return type(e).__module__.startswith(("ray.exceptions", "ray._raylet", "grpc")) or isinstance(e, ConnectionError)


def _quiet() -> None:
    """A search prints claims-search's own lines; ``-v`` (root logger at DEBUG) shows Ray's,
    Tune's, MLflow's and Optuna's too."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    import mlflow  # noqa: F401 - it sets its loggers' levels on import: import first, then quiet them
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in RDB ..."
    for name in ("mlflow", "alembic", "ray", "ray.tune", "ray.train"):  # "Creating initial MLflow database tables"
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Token authentication is enabled for this Ray cluster": on by default in Ray 2.60, not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Tune's configuration box and its TensorBoard hint (not installed; a path that vanishes).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _init_ray(address: str | None):
    import ray

    if address:
        _probe_ray(address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    try:
        if address or os.environ.get("RAY_ADDRESS"):  # a cluster (inside a Ray job RAY_ADDRESS is set)
            ray.init(address=address, log_to_driver=False, logging_level=logging.INFO if verbose else logging.WARNING)
        else:  # the embedded default: its own instance, no dashboard. ray.init with no address would join
            # the cluster last started on this machine with `ray start` (/tmp/ray/ray_current_cluster).
            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.INFO if verbose else logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClaimsSearchError(f"Ray at {address or 'local'}: cannot connect: {str(e).splitlines()[0]}") from None
    return ray


def _baselines(run: Run) -> None:
    """LightGBM once per task per search, shown on every frontier (none when the space asks
    for none; skipped when resumed), recorded by the tracker; the state is mirrored after."""
    if not run.space.baseline:
        return
    space, tracker = run.space, run.tracker
    done = {r.task for r in tracker.records() if r.is_baseline}
    todo = [t for t in space.task_names if t not in done]
    for task, out in zip(todo, _fit_baselines(run, todo) if todo else []):
        m, c = out["metrics"], cost_value(out["cost"], space.cost)
        tracker.log_trial(TrialRecord(
            trial_id="baseline-lightgbm", task=task, status="complete", params={"model": {}, "kind": "lightgbm"},
            n_params=None, metric=m[space.metric], metric_low=m[f"{space.metric}_low"],
            metric_high=m[f"{space.metric}_high"], cost=c, pretrain_cost=0.0, finetune_cost=c, is_baseline=True,
            extras=_extras(m, out["cost"]), checkpoint=out["folder"], tags={"device": device_kind(out["cost"]["device"])},
            predictions=f"{out['folder']}/predictions/tuning.parquet"))
    run.places.push()


def _fit_baselines(run: Run, tasks: list[str]) -> list[dict]:
    """One LightGBM fit per task, each a Ray task with one CPU (and one LightGBM thread: what it
    is charged for); its model and tuning predictions go to the search's ``baseline/<task>``
    on storage. Per task: its tuning metrics, cost and folder."""
    ray, data, folder = run.ray, run.data, run.places.baseline

    @ray.remote(num_cpus=1)
    def fit(task: str) -> dict:
        import tempfile

        from claims_search import storage as st
        from claims_search.runs.baseline import baseline

        # Only aggregates and locations come back; the model and predictions go to storage.
        with tempfile.TemporaryDirectory() as tmp:
            res = baseline(st.localize(data), task, Path(tmp) / task, num_threads=1)
            dest = st.upload(Path(tmp) / task, st.join(folder, task))
        return {"metrics": res.metrics["tuning"], "cost": res.cost.to_dict(), "folder": dest}

    from ray.exceptions import RayTaskError

    try:
        return ray.get([fit.remote(t) for t in tasks])
    except RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        raise ClaimsSearchError(f"baseline: {str(cause).strip().splitlines()[-1]}") from None


def _run_policy(run: Run) -> str | None:
    """The space's trials through Ray Tune until its sampler (Optuna, or a grid) or the ladder
    policy is done; a resumed search restores Tune's experiment. Then the study's orphans are
    failed and the records the outbox lacks recovered. The ladder policy's last word (why it
    stopped); None for another sampler."""
    from ray import tune

    from claims_search.search.tune import TrackingCallback

    req, space = run.req, run.space
    ctx = _trial_context(run)
    ladder = _start_ladder(run) if space.sampler.kind == "ladder" else None
    if ladder:  # every pretraining's rank 0 asks the policy at its rungs
        ctx = dataclasses.replace(ctx, policy_actor=ladder.actor_name, policy_namespace=ladder.namespace,
                                  rungs=tuple(space.sampler.rungs))
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), _driver_resources(space.budget))
    total = len(ladder.cands) if ladder else space.num_samples() if not space.is_grid else len(space.grid_samples())
    callbacks = [TrackingCallback(run.tracker, space, progress=req.progress, state=run.places,
                                  concurrency=run.concurrency, waiting=run.waiting, total=total)]
    tuner = _tuner(run, trainable, callbacks, ladder)
    started = time.monotonic()
    tuner.fit()
    log.info("search %s: trials finished in %.0f s", req.name, time.monotonic() - started)
    _fail_orphans(run.places.optuna_db, req.name)
    _recover_records(ctx.artifacts, space, run.tracker)
    return _ladder_verdict(run, ladder) if ladder else None


def _trial_context(run: Run) -> TrialContext:
    """What every trial of the search shares; each trial's files go under the search's
    ``trials`` folder."""
    b = run.space.budget
    return TrialContext(
        space=run.space, cache_dir=run.data, artifacts=run.places.trials, tasks=tuple(run.space.task_names),
        metric=run.space.metric, cost=run.space.cost, workers=b.workers_per_trial, use_gpu=b.gpus_per_worker > 0,
        cpus_per_worker=b.cpus_per_worker, gpus_per_worker=b.gpus_per_worker, vocab_size=run.cache.vocab_size,
        worker_resources=tuple(sorted(b.worker_resources.items())))


def _driver_resources(b) -> dict[str, Any]:
    """What one trial's own driver (the Tune trainable) holds, for ``tune.with_resources``."""
    # The trial's own driver takes ~no CPU: its Ray Train workers hold the resources (with a
    # whole CPU each, two trials on two CPUs deadlock).
    driver = {"cpu": 0.01} if b.workers_per_trial else {"cpu": b.cpus_per_worker, "gpu": b.gpus_per_worker}
    if b.driver_resources or (not b.workers_per_trial and b.worker_resources):
        driver["custom_resources"] = {**(b.worker_resources if not b.workers_per_trial else {}),
                                      **b.driver_resources}
    return driver


@dataclass(frozen=True)
class _Ladder:
    """The ladder policy of one search: its named actor and the sizes it chooses among."""

    actor_name: str
    namespace: str
    actor: Any
    cands: dict[str, tuple[Any, dict]]  # size key -> (policy.Candidate, Tune config)


def _start_ladder(run: Run) -> _Ladder:
    """The size policy's actor, which the searcher and every pretraining's rank 0 ask; named
    after the search and its experiment, so that a resumed searcher finds the new one."""
    from claims_search.search import ladder as sp

    cands = sp.candidates(run.space, run.cache.vocab_size)
    actor_name = f"policy-{run.req.name}-{run.experiment}"
    actor = sp.start_actor(actor_name, [c for c, _ in cands.values()], run.space.task_names, sp.settings(run.space))
    return _Ladder(actor_name, sp.NAMESPACE, actor, cands)


def _tuner(run: Run, trainable, callbacks: list, ladder: _Ladder | None):
    """Tune's tuner: the search's experiment restored on resume (when Tune saved it), else a new
    one whose searcher is the ladder policy's, the guarded Optuna search over the study, or
    Tune's own grid."""
    from ray import tune

    from claims_search.search.tune import GuardedOptunaSearch, make_sampler

    req, space, b = run.req, run.space, run.space.budget
    # The experiment's name is also the folder Ray stages the driver's Tune files in on this node
    # (<session>/artifacts/<start second>/<name>): a name shared by two searches that start in the
    # same second mixes their experiment states, so each search has its own.
    run_config = tune.RunConfig(name=run.experiment, storage_path=run.tune_path, storage_filesystem=run.tune_fs,
                                callbacks=callbacks, verbose=0, failure_config=tune.FailureConfig(max_failures=1))
    tune_path = f"{run.tune_path.rstrip('/')}/{run.experiment}"
    if req.resume and tune.Tuner.can_restore(tune_path, storage_filesystem=run.tune_fs):
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_errored=True, restart_errored=False,
                                   param_space={} if ladder else space.tune_param_space(),
                                   storage_filesystem=run.tune_fs)
        # Callbacks are not restored with the experiment: hand them over again.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    search_alg, num_samples = None, space.num_samples()
    if ladder:
        from claims_search.search.ladder import PolicySearcher

        search_alg, num_samples = PolicySearcher(ladder.actor_name, ladder.cands, space), len(ladder.cands)
    elif not space.is_grid:
        metrics, modes = _directions(space)
        points, num_samples = _no_repeats(space)
        search_alg = GuardedOptunaSearch(
            metric=metrics, mode=modes, sampler=make_sampler(space), points_to_evaluate=points,
            storage=_optuna_storage(run.places.optuna_db), study_name=req.name)
    return tune.Tuner(
        trainable, param_space={} if ladder else space.tune_param_space(),
        tune_config=tune.TuneConfig(num_samples=num_samples, search_alg=search_alg,
                                    max_concurrent_trials=run.concurrency, reuse_actors=False,
                                    time_budget_s=b.time_budget_s),
        run_config=run_config)


def _ladder_verdict(run: Run, ladder: _Ladder) -> str:
    """Why the ladder policy stopped, asked of its actor once every trial ended (then the actor
    is stopped), and logged."""
    done = run.ray.get(ladder.actor.propose.remote())  # Done once every trial ended (Tune ran out of sizes)
    run.ray.kill(ladder.actor)
    line = done.line if hasattr(done, "line") else "stopped: the search ended before the policy declared done"
    log.info("search %s: %s", run.req.name, line)
    return line


def _fail_orphans(db: Path, name: str) -> int:
    """Tell FAIL (user attribute ``orphaned``) every trial the Optuna study still has RUNNING
    once Tune is done: one the sampler proposed just before a driver died, before Tune saved
    that it existed, so that the resumed Tune never ran it. Without this it stays RUNNING for
    ever. How many there were."""
    import optuna

    if not db.exists():
        return 0
    storage = _optuna_storage(db)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # a grid search: no study
        return 0
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        storage.set_trial_user_attr(t._trial_id, "orphaned", True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    if running:
        log.warning("search %s: %d Optuna trial(s) left RUNNING by an interrupted driver marked FAIL (orphaned)",
                    name, len(running))
    return len(running)


def _no_repeats(space) -> tuple[list[dict] | None, int]:
    """(configurations to enqueue, number of trials) so that no configuration is trained twice.

    A space with finitely many configurations and a budget that covers them tries each once
    (and says the budget was cut); with the random sampler and a smaller budget, a random set of
    distinct ones. Otherwise the sampler proposes, and ``GuardedOptunaSearch`` refuses repeats.
    """
    import random

    points, budget = space.distinct_points(), space.budget.trials
    if points is None:
        return None, budget
    if len(points) <= budget:
        if len(points) < budget:
            log.warning("%s: the space has %d distinct configuration(s), fewer than its %d trials: each is "
                        "tried once", space.path, len(points), budget)
        random.Random(space.sampler.seed).shuffle(points)
        return points, len(points)
    if space.sampler.kind == "random":
        return random.Random(space.sampler.seed).sample(points, budget), budget
    return None, budget


def _recover_records(artifacts: str, space, tracker) -> None:
    """Records of finished trials the outbox lacks (a driver that died between a trial's end and
    its callback, or an outbox lost with its node), rebuilt from each trial's ``final.json``."""
    import pyarrow.fs as pafs

    from claims_search.storage import filesystem

    have = {r.trial_id for r in tracker.records()}
    fs, root = filesystem(artifacts)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(root)):
        trial_id = info.base_name
        final = f"{info.path}/final.json"
        if trial_id in have or fs.get_file_info(final).type == pafs.FileType.NotFound:
            continue
        with fs.open_input_stream(final) as f:
            try:
                result = json.loads(f.read())
            except ValueError:
                continue
        log.info("trial %s: result recovered from %s", trial_id, final)
        for r in records_from_result(trial_id, result, space.task_names, space):
            tracker.log_trial(r, sync=False)
    tracker.sync()


def _same_search(run_dir: Path, space, data: str, resume: bool) -> str:
    """A resumed search must use the space and the data it started with: one frontier, one
    experiment. The first start writes what they were, and the search's own Tune experiment
    name (returned; ``tune`` for a search started before it had one)."""
    import hashlib
    import secrets

    ident = {"space": hashlib.sha256(Path(space.path).read_bytes()).hexdigest()[:16], "data": data}
    f = run_dir / "search.json"
    if resume and f.exists():
        was = json.loads(f.read_text())
        for key, label in (("space", "search space file"), ("data", "--data")):
            if was.get(key) != ident[key]:
                raise ClaimsSearchError(f"{f}: --resume with another {label} than the search started with "
                                        f"({was.get(key)} then, {ident[key]} now)")
        return was.get("tune_experiment", "tune")
    experiment = f"tune-{secrets.token_hex(4)}"
    # metric and cost name the tracked figures (read by `claims-search sync`)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({**ident, "metric": space.metric, "cost": space.cost, "tune_experiment": experiment}))
    tmp.replace(f)
    return experiment


def _directions(space):
    from claims_search.search.objective import directions

    return directions(space)


def _optuna_storage(db: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{db}")
