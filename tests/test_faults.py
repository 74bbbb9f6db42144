"""Faults injected from outside into one real search (a one-node `ray start --head` cluster, real
Optuna, a real `mlflow server`), all during the same three trials (tests/spaces/faults.yaml, one
at a time) so that the suite pays for one search:

- the Ray Train worker of the training trial is SIGKILLed once Ray Train registered its
  checkpoint at step 200: Ray Train restarts the worker group and the trial continues from 200;
- every Train worker is moved, as it appears, into a memory cgroup of its own (1 GiB for what it
  allocates from then on): the trial whose model is too large is killed by the kernel's OOM
  killer in every attempt and ends failed with its reason, while the search carries on;
- one trial asks for more than the prepared cache holds and ends failed with that reason;
- the MLflow server is killed for 30 s mid-search and started again on the same port and store;
  then killed again when the trials are done and kept down until the search has exited (a
  server that never came back): the search finishes with everything on disk and
  `claims-search sync` delivers the rest once the server is back;
- a second, tiny search (tests/spaces/concurrent.yaml, one trial) starts at the same moment on
  the same cluster, the same MLflow server and the same --storage, under another name that
  begins with the first one's: both finish, and neither sees the other's experiment, registered
  models, storage folder or Optuna study.

At the end MLflow holds exactly what the search's own records say (every trial record, its
metrics, the failed trials' reasons, the frontier artifacts, the held-out confirmation, a
registered model per task); the Optuna study has one COMPLETE trial and two FAIL; and starting
the search again under the same name without --resume is refused with one line and changes
nothing. Needs root (a writable cgroup v1 memory controller), as CI has; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.cluster_harness import MlflowServer, free_port
from tests.test_search import RaySandbox


REPO = Path(__file__).resolve().parents[1]
TASKS = ["ckd_incidence"]  # tests/spaces/faults.yaml
NAME = "faults"
TWIN = "faults-concurrent"  # tests/spaces/concurrent.yaml; a name that begins with NAME on purpose
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
LIMIT = 1 << 30  # what a Train worker may allocate after it is moved into its cgroup


def _cgroups_writable() -> bool:
    probe = CGROUP_ROOT / f"cs-probe-{os.getpid()}"
    try:
        probe.mkdir()
        (probe / "memory.limit_in_bytes").write_text(str(LIMIT))
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return True


class TrainWorkerJail:
    """Moves every Ray Train worker under ``root_pid`` into a memory cgroup of its own (limit
    ``LIMIT``) as soon as it appears: from outside, the way a container limit would apply.
    cgroup v1 does not move a process's earlier charges, so each worker gets ``LIMIT`` for what
    it allocates from then on (its model, optimizer and data)."""

    def __init__(self, root_pid: int):
        self.root_pid, self.groups = root_pid, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def workers(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for p in kids:
            with contextlib.suppress(psutil.Error):
                if " ".join(p.cmdline()).startswith("ray::RayTrainWorker"):
                    out.append(p)
        return out

    def _watch(self) -> None:
        while not self.stop.is_set():
            for p in self.workers():
                if p.pid in self.groups:
                    continue
                group = CGROUP_ROOT / f"cs-faults-{p.pid}"
                with contextlib.suppress(OSError):
                    group.mkdir()
                    (group / "memory.limit_in_bytes").write_text(str(LIMIT))
                    with contextlib.suppress(OSError):  # no swap accounting on some kernels
                        (group / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
                    (group / "cgroup.procs").write_text(str(p.pid))
                    self.groups[p.pid] = group
            time.sleep(0.1)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in our cgroups."""
        n = 0
        for g in self.groups.values():
            with contextlib.suppress(OSError):
                for line in (g / "memory.oom_control").read_text().splitlines():
                    if line.startswith("oom_kill "):
                        n += int(line.split()[1])
        return n

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for g in self.groups.values():
            for _ in range(50):  # empty once its process is gone
                try:
                    g.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def start_head(box: RaySandbox) -> tuple[str, dict[str, str], int, int]:
    """A one-node cluster (`ray start --head`, 2 CPUs) under the sandbox's temp dir, with an
    auth token of its own: (its address, the environment its clients need, the process group
    of its processes, its raylet's pid: the parent of every Ray worker process)."""
    from tests.cluster_harness import BIN, _ray_start

    port = free_port()
    env = {**box.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    pgid = _ray_start(["--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                       f"--ray-client-server-port={free_port()}"], env, Path(box.root) / "h")
    raylet = next(p.pid for p in psutil.process_iter(["name", "cmdline"])
                  if p.info["name"] == "raylet" and any(box.root in a for a in p.info["cmdline"] or ()))
    return f"127.0.0.1:{port}", env, pgid, raylet


def _wait(cond, timeout: float, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen (search rc {proc.poll()})\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def mlflow_restartable():
    """An `mlflow server` of this module's own, which its tests stop and start again."""
    import shutil

    root = Path(tempfile.mkdtemp(prefix="csmlflow"))
    server = MlflowServer(f"http://127.0.0.1:{(port := free_port())}", port, root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not _cgroups_writable(), reason="needs a writable cgroup v1 memory controller (root)")
def test_a_search_survives_a_killed_worker_an_oom_kill_failing_trials_a_tracking_outage_and_a_concurrent_search(
        prepared, tmp_path, mlflow_restartable):
    """Measured on the 2-core development machine (shared): see docs/reliability.md."""
    import optuna
    from mlflow.tracking import MlflowClient

    from claims_search.search.state import SearchState
    from claims_search.tracking.tracker import RECORD, Tracker, registered_name

    server = mlflow_restartable
    runs = tmp_path / "runs"
    log, twin_log = tmp_path / "search.log", tmp_path / "concurrent.log"
    box = RaySandbox()
    events: dict[str, float] = {}
    t0 = time.monotonic()
    proc = twin = head = None
    try:
        address, env, head, raylet = start_head(box)
        events["ray_start_s"] = time.monotonic() - t0

        def search(space: str, name: str) -> list[str]:
            return [sys.executable, "-m", "claims_search.cli", "search", "--space", space, "--data", str(prepared),
                    "--tracking-uri", server.url, "--name", name, "--storage", str(runs), "--address", address,
                    "--no-progress"]

        cmd = search("tests/spaces/faults.yaml", NAME)
        # Both searches at once: the same cluster, MLflow server and storage; another name.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        twin = subprocess.Popen(search("tests/spaces/concurrent.yaml", TWIN), cwd=REPO, env=env,
                                stdout=open(twin_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        with TrainWorkerJail(raylet) as jail:
            # 1. The Train worker dies (SIGKILL from outside) once Ray Train has registered its
            # checkpoint at step 200 (a checkpoint folder alone may still be being written).
            def registered():
                for snap in (runs / NAME / "trials").glob("*/train/ray/checkpoint_manager_snapshot.json"):
                    with contextlib.suppress(OSError):
                        if "phase00_step_00000200" in snap.read_text():
                            return snap.relative_to(runs / NAME / "trials").parts[0]
                return None

            _wait(registered, 600, proc, log, "a checkpoint at step 200")
            resumed_trial = registered()
            (victim,) = jail.workers()  # concurrency 1 (and none in the other search): the only one
            victim.send_signal(signal.SIGKILL)
            events["worker_killed"] = time.monotonic() - t0
            snapshot = runs / NAME / "trials" / resumed_trial / "train" / "ray" / "checkpoint_manager_snapshot.json"

            def next_checkpoint():  # recovered: the restarted worker group checkpointed again
                while not events.get("search_exit"):
                    with contextlib.suppress(OSError):
                        if "phase00_step_00000400" in snapshot.read_text():
                            events["worker_recovered_s"] = time.monotonic() - t0 - events["worker_killed"]
                            return
                    time.sleep(0.2)

            threading.Thread(target=next_checkpoint, daemon=True).start()

            # The concurrent search ends on its own meanwhile (before the outage below, so that
            # everything it tracked is in MLflow without a sync).
            twin_rc = twin.wait(timeout=600)
            events["concurrent_search_exit"] = time.monotonic() - t0
            assert proc.poll() is None  # the two searches overlapped

            # 2. MLflow goes away for 30 s in the middle of the search, then comes back.
            server.stop()
            events["mlflow_down_1"] = time.monotonic() - t0
            time.sleep(30)
            events["mlflow_restart_s"] = server.start()
            events["mlflow_up_1"] = time.monotonic() - t0

            # 3. ... and away again once the trials are done, until the search has exited.
            _wait(lambda: "trials finished in" in log.read_text(), 900, proc, log, "the end of the trials")
            server.stop()
            events["mlflow_down_2"] = time.monotonic() - t0
            rc = proc.wait(timeout=600)
            events["search_exit"] = time.monotonic() - t0
            oom_kills = jail.oom_kills()
    finally:
        from tests.cluster_harness import stop_processes

        for p in (proc, twin):
            if p is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        if head is not None:
            stop_processes([head], box.root)
        box.close()
    text = log.read_text()
    print(json.dumps(events), file=sys.stderr)
    assert rc == 0, text[-5000:]

    # The search finished on its own, with its results on disk, and said how they end up in MLflow.
    assert "1 trial(s) complete, 2 failed, 0 pruned" in text, text[-3000:]
    assert "claims-search sync --name faults" in text, text[-3000:]
    assert "View run" not in text  # MLflow's per-run links: a line per trial and task, not ours
    tracker = Tracker(server.url, NAME, SearchState.for_search(str(runs), NAME).outbox)
    pending = len(tracker.pending())
    assert pending > 0  # at least the summaries, published while the server was down

    # The worker killed at step 200 resumed there: the pretraining did not start again.
    pre = json.loads((runs / NAME / "trials" / resumed_trial / "pretrain" / "result.json").read_text())
    assert (pre["resumed_from_step"], pre["step"]) == (200, 400), pre
    # The kernel's OOM killer, not an exception of ours, ended the large model's attempts.
    assert oom_kills >= 1

    # The server comes back; one command delivers what waited.
    events["mlflow_restart_2_s"] = server.start()
    synced = subprocess.run([sys.executable, "-m", "claims_search.cli", "sync", "--name", NAME, "--storage",
                             str(runs), "--tracking-uri", server.url], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert synced.returncode == 0, synced.stdout + synced.stderr[-3000:]
    assert f"{pending} result(s) delivered, 0 still pending, 0 set aside" in synced.stdout, synced.stdout

    # MLflow holds exactly what the search's records say: every trial of every task, once.
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(NAME)
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in all_runs if r.data.tags.get("claims_search.role") == "trial"]
    records = tracker.records()
    assert len(records) == 3 * len(TASKS)  # three trials per task
    by_key = {(r.data.tags["claims_search.task"], r.data.tags["trial_id"]): r for r in children}
    assert len(by_key) == len(children) == len(records)  # no duplicate child run
    reasons = {}
    for rec in records:
        run = by_key[(rec.task, rec.trial_id)]
        assert json.loads(run.data.tags[RECORD]) == json.loads(json.dumps(rec.to_dict(), default=str))
        assert run.data.tags["status"] == rec.status
        if rec.status == "complete":
            assert run.data.metrics["auprc"] == rec.metric and run.data.metrics["cost"] == rec.cost
        if rec.status == "failed":
            reasons[rec.trial_id] = run.data.tags["claims_search.reason"]
    assert sorted(reasons.values()) == sorted([
        f"{prepared}/manifest.json: settings.max_len: the cache was prepared for up to 128 events per sequence, "
        f"the model size asks for max_len=256 (prepare again with --max-len 256, or use a smaller max_len)",
        "Ray Train gave up after its retries: a Ray Train worker process died without a Python error (killed by "
        "the kernel's OOM killer, a SIGKILL, or a crash)"]), reasons

    parents = {r.data.tags["claims_search.task"]: r for r in all_runs
               if r.data.tags.get("claims_search.role") == "parent"}
    assert sorted(parents) == sorted(TASKS)
    for task, parent in parents.items():
        assert {"frontier.png", "frontier.html", "frontier.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert parent.data.metrics["n_failed"] == 2
        assert "held_out_recommended_auprc" in parent.data.metrics  # the held-out confirmation, delivered late
        assert client.get_model_version_by_alias(registered_name(NAME, task), "recommended").version

    # The Optuna study: one trial COMPLETE, two FAIL, nothing left RUNNING.
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{runs / NAME / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL", "FAIL"]

    # The concurrent search finished too, and nothing crossed between the two searches.
    twin_text = twin_log.read_text()
    assert twin_rc == 0, twin_text[-5000:]
    assert "1 trial(s) complete, 0 failed, 0 pruned" in twin_text, twin_text[-3000:]
    twin_tracker = Tracker(server.url, TWIN, SearchState.for_search(str(runs), TWIN).outbox)
    assert twin_tracker.pending() == []  # it ended before the outage: all of it is in MLflow
    own = {NAME: {r.trial_id for r in records}, TWIN: {r.trial_id for r in twin_tracker.records()}}
    assert len(own[NAME]) == 3 and len(own[TWIN]) == 1 and not own[NAME] & own[TWIN]
    for name in (NAME, TWIN):
        # Its own experiment holds its own trials only; its registered model, its own versions only.
        mine = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
        assert {r.data.tags["trial_id"] for r in mine if r.data.tags.get("claims_search.role") == "trial"} == own[name]
        (model,) = {registered_name(name, task) for task in TASKS}
        versions = client.search_model_versions(f"name = '{model}'")
        assert versions and all(v.run_id in {r.info.run_id for r in mine} and v.tags["trial_id"] in own[name]
                                for v in versions), (model, versions)
        # Its own storage folder and Optuna study: no path names the other search's trials, and
        # the study database holds this search's study only. (Ray stages a driver's Tune files
        # in <Ray session>/artifacts/<second Tune started>/<experiment name>/ and syncs that
        # folder to the search's storage: two searches whose Tune starts in the same second on
        # one node share it unless their experiment names differ.)
        other = own[TWIN if name == NAME else NAME]
        assert not [p for p in (runs / name).rglob("*") if any(t in str(p.relative_to(runs)) for t in other)]
        assert (runs / name / "optuna.db").exists()
        assert optuna.get_all_study_names(f"sqlite:///{runs / name / 'optuna.db'}") == [name]
    assert registered_name(NAME, TASKS[0]) != registered_name(TWIN, TASKS[0])
    twin_study = optuna.load_study(study_name=TWIN, storage=f"sqlite:///{runs / TWIN / 'optuna.db'}")
    assert [t.state.name for t in twin_study.trials] == ["COMPLETE"]

    # The same name again without --resume: refused in one line, nothing touched.
    before = {p: p.stat().st_mtime for p in (runs / NAME).rglob("*") if p.is_file()}
    again = subprocess.run(cmd, cwd=REPO, env={**os.environ, "RAY_TMPDIR": "/nonexistent"}, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"claims-search search: error: {runs / NAME}: a search named 'faults' exists; pass --resume to finish it "
        f"or choose another --name"], again.stderr
    assert {p: p.stat().st_mtime for p in (runs / NAME).rglob("*") if p.is_file()} == before
    print(json.dumps(events), file=sys.stderr)


@pytest.mark.slow
def test_a_server_that_dies_during_a_sync_is_an_outage_not_a_refusal(mlflow_restartable, tmp_path):
    """The server is killed while a sync is pushing: what was not delivered stays pending and no
    failed push is counted against it (only a server that answers and refuses an entry has it
    set aside after MAX_ATTEMPTS)."""
    from claims_search.tracking.tracker import Tracker
    from tests.test_tracking import trial

    server = mlflow_restartable
    if server.proc is None:
        server.start()
    tracker = Tracker(server.url, "dies-mid-sync", tmp_path / "outbox")
    for i in range(40):
        tracker.log_trial(trial(f"t{i}", "ckd_incidence", 0.4, 10.0 + i), sync=False)
    sent = tmp_path / "outbox" / "sent.jsonl"

    def kill_after_the_first_delivery():
        while not (sent.exists() and sent.read_text().strip()):
            time.sleep(0.01)
        server.stop()

    killer = threading.Thread(target=kill_after_the_first_delivery)
    killer.start()
    left = tracker.sync()
    killer.join()
    assert 0 < left < 40 and len(tracker.pending()) == left
    assert not (tmp_path / "outbox" / "failed.jsonl").exists()  # nothing counted towards setting aside
    assert tracker.set_aside() == []


def test_a_trial_that_reports_its_own_failure_is_failed_in_the_study():
    import optuna
    from ray import tune

    from claims_search.search.tune import GuardedOptunaSearch

    s = GuardedOptunaSearch(metric=["a/auprc", "cost"], mode=["max", "min"],
                            sampler=optuna.samplers.RandomSampler(seed=0))
    s.set_search_properties(None, None, {"lr": tune.loguniform(1e-4, 1e-2)})
    s.suggest("t1")
    s.on_trial_complete("t1", {"status": "failed", "reason": "boom", "a/auprc": None, "cost": None})
    assert [t.state for t in s._ot_study.trials] == [optuna.trial.TrialState.FAIL]


def test_a_dead_train_worker_is_named_in_one_line():
    from claims_search.search.trial import failure_reason

    ray_says = ("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nThe actor is dead because its "
                "worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly "
                "exits with a connection error code 2. End of file. Some common causes include: (1) the process "
                "was killed by the OOM killer due to high memory usage, ...")
    assert "OOM killer" in failure_reason(ray_says) and "\n" not in failure_reason(ray_says)
    raised = "Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n" \
             '  File "x.py", line 1, in f\nValueError: bad batch'
    assert failure_reason(raised) == "ValueError: bad batch"


def test_a_trial_an_interrupted_driver_left_running_in_the_study_is_marked_failed(tmp_path):
    """The sampler proposed a trial, then the driver died before Tune saved that the trial
    existed: the resumed search never runs it, and at its end the study says so."""
    import optuna

    from claims_search.search.driver import _fail_orphans

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    done = study.ask()
    study.tell(done, [0.5, 10.0])
    study.ask()  # proposed, then the driver died
    assert _fail_orphans(tmp_path / "optuna.db", "s") == 1
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs == {"orphaned": True}
    assert _fail_orphans(tmp_path / "optuna.db", "s") == 0
