"""Searches submitted to a real multi-node Ray cluster whose nodes share no disk, as on KubeRay
or launcher VMs: every worker node has a private /tmp and ~/.cache (its own mount namespace),
trial drivers run only on node 1 and Ray Train workers only on node 2, and the only shared
storage is an S3-compatible server (moto). Submitted the way the README shows: through
`claims-search submit`, with a relative `--space` path. Tracked by a real `mlflow server` whose
artifacts live on that S3 server; the MLflow UI is checked in headless Chromium.

The search's driver is SIGKILLed mid-trial (one trial finished, another past its pretraining):
the job fails, and the same job submitted again with --resume finishes the search without
training a finished trial again, the interrupted trial continuing from its S3 checkpoint.

Also: resume after the head lost its local state; two jobs submitted at once, a search in which
nothing completes (it fails through `submit --follow`) and the shared-mount case (an NFS-style
path seen by every node at the same place, with CLAIMS_SEARCH_SHARED_FS=1); and, last because
it changes the cluster, a Train worker node lost mid-trial (a third node joins; the trial
resumes there from its S3 checkpoint).

Run time inside a full `make test` on a fresh clone (2026-12-02, a 2-core AMD EPYC): the
cluster start-up, upload, the 3-trial S3 search with its mid-trial kill and resubmission 328 s;
the two searches submitted at once 119 s; the resume after wiping the head's state 47 s; the
node loss 158 s; the rest (registry loads, privacy scan, browser) under a minute.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TASKS = ["ckd_incidence", "antihypertensive_start"]
NAME = "private-cluster"
SPACE = "tests/spaces/private_cluster.yaml"  # relative, as a user types it


def cli(*argv: str, env: dict, timeout: float = 1200) -> subprocess.CompletedProcess:
    """``claims-search ARGV`` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "claims_search.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(cluster, mlflow_server, env_vars: dict, storage: str, *search: str) -> subprocess.CompletedProcess:
    """``claims-search submit --follow`` of one search command; the job's output comes back (and
    is kept in test-artifacts/ for reading after a CI run)."""
    envs = [a for k, v in env_vars.items() for a in ("--env", f"{k}={v}")]
    out = cli("submit", "--address", cluster.dashboard_url, "--follow", "--tracking-uri", mlflow_server.url,
              "--storage-path", storage, *envs, "--", "search", *search, "--no-progress",
              env={**cluster.client_env(), **env_vars})
    logs = REPO / "test-artifacts" / "cluster-search"
    logs.mkdir(parents=True, exist_ok=True)
    name = search[search.index("--name") + 1] + ("-resume" if "--resume" in search else "")
    (logs / f"{name}.log").write_text(out.stdout + out.stderr)
    return out


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """This process talks to the S3 server too (to upload the data and read results back)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3_server.env.items():
            mp.setenv(k, v)
        yield s3_server.env


@pytest.fixture(scope="module")
def nodes(ray_cluster) -> dict[str, str]:
    """Node ids by role: head, drivers (node 1), train (node 2), asked of the cluster itself."""
    code = ("import ray, json; ray.init(address='%s'); print(json.dumps({k: [n['NodeID'] for n in ray.nodes() "
            "if n['Alive'] and r in n['Resources']] for k, r in [('head', 'node:__internal_head__'), "
            "('drivers', 'trial_driver'), ('train', 'train_worker')]}))" % ray_cluster.gcs_address)
    out = subprocess.run([sys.executable, "-c", code], env=ray_cluster.client_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    ids = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: v[0] for k, v in ids.items()}


@pytest.fixture(scope="module")
def s3_search(ray_cluster, mlflow_server, s3_server, s3_env, prepared, tmp_path_factory):
    """The search on S3 storage, submitted, and its driver SIGKILLed mid-trial (one trial
    finished, another past its pretraining but not finished): the job fails; the same job
    submitted again with --resume finishes the search. Its head-side state folder is the
    test's to wipe."""
    import threading
    import time

    from claims_search import storage

    data = storage.upload(prepared, s3_server.uri("prepared"))
    state = tmp_path_factory.mktemp("head-state")
    env = {**s3_env, "CLAIMS_SEARCH_STATE_DIR": str(state)}
    args = ("--space", SPACE, "--data", data, "--name", NAME)
    first: dict = {}
    job = threading.Thread(target=lambda: first.update(out=submit(ray_cluster, mlflow_server, env,
                                                                  s3_server.uri("runs"), *args)))
    job.start()
    trials = StoredTrials(s3_server)
    deadline = time.monotonic() + 900
    while (interrupted := trials.in_progress()) is None:
        assert job.is_alive() and time.monotonic() < deadline, first.get("out")
        time.sleep(0.5)
    killed = kill_search(NAME)
    job.join(timeout=300)
    finished = trials.finals()
    pretrained = trials.read(interrupted, "train/phases/0/outcome.json")
    out = submit(ray_cluster, mlflow_server, env, s3_server.uri("runs"), *args, "--resume")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    return {"out": out, "first": first["out"], "killed": killed, "env": env, "state": state, "data": data,
            "finished": finished, "interrupted": interrupted, "pretrained": pretrained, "trials": trials}


class StoredTrials:
    """The search's trial folders on S3, read as the test polls them."""

    def __init__(self, s3_server):
        from claims_search import storage

        self.fs, self.root = storage.filesystem(s3_server.uri("runs", NAME, "trials"))

    def _files(self):
        import pyarrow.fs as pafs

        return self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))

    def read(self, trial: str, rel: str) -> dict:
        with self.fs.open_input_stream(f"{self.root}/{trial}/{rel}") as f:
            return json.loads(f.read())

    def finals(self) -> dict[str, object]:
        """Each finished trial (it wrote final.json) and when its final.json was written."""
        return {i.path.split("/")[-2]: i.mtime for i in self._files() if i.base_name == "final.json"}

    def in_progress(self) -> str | None:
        """Once a trial has finished: a trial that has not, whose Ray Train run registered the
        checkpoint of its finished pretraining (``phase00_done``); else None."""
        import contextlib

        files = self._files()
        done = {i.path.split("/")[-2] for i in files if i.base_name == "final.json"}
        if not done:
            return None
        for i in files:
            if i.base_name == "checkpoint_manager_snapshot.json":
                trial = i.path[len(self.root) + 1:].split("/")[0]
                with contextlib.suppress(OSError), self.fs.open_input_stream(i.path) as f:
                    if b"phase00_done" in f.read() and trial not in done:
                        return trial
        return None


def kill_search(name: str) -> list[int]:
    """SIGKILL the job's search processes (its supervisor and the driver it runs), as when the
    driver's node dies; not the local `submit` that follows the job. Their pids."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if "claims_search.cli" in argv and "search" in argv and name in argv and "submit" not in argv:
            procs.append(p)
    assert procs, f"no search process of {name} found"
    for p in sorted(procs, key=lambda p: p.pid):  # the supervisor first: no goodbye line from it
        with contextlib.suppress(psutil.Error):
            p.kill()
    return [p.pid for p in procs]


def _children(client, name: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = {r.data.tags["claims_search.task"]: r for r in runs if r.data.tags.get("claims_search.role") == "parent"}
    return {task: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
            for task, p in parents.items()}


def test_every_trial_completes_and_the_job_says_so(s3_search):
    out = s3_search["out"].stdout
    assert "succeeded" in out
    assert "3 trial(s) complete, 0 failed, 0 pruned" in out


def test_a_driver_killed_mid_trial_fails_the_job_and_resubmitting_it_finishes_the_search(s3_search):
    """The first job failed (its driver was killed); the resubmitted one did not train the
    finished trials again, and the interrupted trial continued from its checkpoint on S3."""
    import optuna

    assert s3_search["first"].returncode != 0 and "succeeded" not in s3_search["first"].stdout
    trials, interrupted = s3_search["trials"], s3_search["interrupted"]
    finals = trials.finals()
    assert len(finals) == 3 and interrupted in finals and interrupted not in s3_search["finished"]
    assert all(finals[t] == mtime for t, mtime in s3_search["finished"].items())  # not trained again
    result = trials.read(interrupted, "pretrain/result.json")  # its pretraining did not run again
    assert (result["val_loss"], result["cost"]["wall_s"]) == (s3_search["pretrained"]["val_loss"],
                                                              s3_search["pretrained"]["cost"]["wall_s"])
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{s3_search['state'] / NAME / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states, states
    # The rest were never trained: proposed before the kill and never started (orphaned), or a
    # repeat of a configuration already trained or resuming, told FAIL at once (duplicate).
    assert all(t.user_attrs.get("orphaned") or t.user_attrs.get("duplicate")
               for t in study.trials if t.state.name != "COMPLETE"), [(t.state.name, t.user_attrs) for t in study.trials]
    complete = [t.params for t in study.trials if t.state.name == "COMPLETE"]
    assert all(a != b for i, a in enumerate(complete) for b in complete[i + 1:]), complete  # no size trained twice


def test_no_trial_driver_shares_a_node_with_its_train_ranks(s3_search, mlflow_server, nodes):
    from mlflow.tracking import MlflowClient

    for task, children in _children(MlflowClient(mlflow_server.url), NAME).items():
        trials = [c for c in children if c.data.tags.get("baseline") == "false"]
        assert len(trials) == 3, task
        for t in trials:
            driver, ranks = t.data.tags["claims_search.driver_node"], t.data.tags["claims_search.rank_nodes"]
            assert driver == nodes["drivers"] and ranks.split(",") == [nodes["train"]]
            assert driver != ranks.split(",")[0]


def test_storage_keeps_results_and_no_train_run_scratch(s3_search, s3_server):
    from claims_search import storage

    fs, root = storage.filesystem(s3_server.uri("runs", NAME, "trials"))
    import pyarrow.fs as pafs

    trials = [i for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.Directory]
    assert len(trials) == 3
    for t in trials:
        names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(t.path))}
        assert names == {"final.json", "pretrain", *(f"finetune-{task}" for task in TASKS)}
    state = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{root.rsplit('/', 1)[0]}/state", recursive=True))}
    assert {"search.json", "outbox.jsonl", "optuna.db"} <= state


def test_mlflow_holds_the_frontier_and_recommended_models_that_load(s3_search, mlflow_server, mlflow_uri):
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from claims_search.tracking.tracker import registered_name

    client = MlflowClient(mlflow_server.url)
    children = _children(client, NAME)
    assert sorted(children) == sorted(TASKS)
    exp = client.get_experiment_by_name(NAME)
    for task, runs in children.items():
        assert len(runs) == 4  # three trials + the baseline
        assert all(c.data.tags.get("pareto") in ("true", "false") for c in runs)
        parent = runs[0].data.tags["mlflow.parentRunId"]
        assert {"frontier.png", "frontier.html", "frontier.csv"} <= {a.path for a in client.list_artifacts(parent)}
        mlflow_uri(mlflow_server.url)
        assert mlflow.pyfunc.load_model(f"models:/{registered_name(NAME, task)}@recommended") is not None
        version = client.get_model_version_by_alias(registered_name(NAME, task), "recommended")
        assert version.run_id in {r.info.run_id for r in runs}  # a trial of this search
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # served by the server, stored on S3


def test_resume_after_the_head_lost_its_local_state(s3_search, ray_cluster, mlflow_server, s3_server):
    import optuna
    from mlflow.tracking import MlflowClient

    before = s3_search["trials"].finals()
    shutil.rmtree(s3_search["state"] / NAME)  # a restarted head pod: its disk is gone
    out = submit(ray_cluster, mlflow_server, s3_search["env"], s3_server.uri("runs"),
                 "--space", SPACE, "--data", s3_search["data"], "--name", NAME, "--resume")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "3 trial(s) complete, 0 failed, 0 pruned" in out.stdout
    assert s3_search["trials"].finals() == before  # no trial trained (or even reported) again

    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{s3_search['state'] / NAME / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states, states  # none run again
    for task, runs in _children(MlflowClient(mlflow_server.url), NAME).items():
        assert len(runs) == 4, task  # no duplicate child runs


def test_two_searches_submitted_at_once_each_end_as_they_should_on_their_own(
        s3_search, ray_cluster, mlflow_server, s3_server, prepared, nodes, s3_env):
    """Two jobs submitted in the same moment to one cluster and one MLflow server:
    - a search on an NFS-style folder, at the same path on every node (here: under the checkout,
      which every node sees), declared shared with CLAIMS_SEARCH_SHARED_FS=1: it succeeds;
    - a search on S3 in which nothing completes: it fails through `submit --follow`, with the
      one line that says so.
    Each job's outcome is its own, and each experiment holds only its own runs."""
    import threading

    from mlflow.tracking import MlflowClient

    shared = REPO / "test-artifacts" / "shared-mount"
    shutil.rmtree(shared, ignore_errors=True)
    shutil.copytree(prepared, shared / "prepared")
    jobs = {
        "shared-mount": lambda: submit(
            ray_cluster, mlflow_server, {"CLAIMS_SEARCH_SHARED_FS": "1"}, str(shared / "runs"), "--space",
            "tests/spaces/one_trial.yaml", "--data", str(shared / "prepared"), "--name", "shared-mount"),
        "failing": lambda: submit(
            ray_cluster, mlflow_server, s3_search["env"], s3_server.uri("runs"), "--space", "tests/spaces/failing.yaml",
            "--data", s3_search["data"], "--name", "failing"),
    }
    outs: dict = {}
    threads = [threading.Thread(target=lambda n=n, f=f: outs.update({n: f()})) for n, f in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1200)

    out = outs["shared-mount"]
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "1 trial(s) complete, 0 failed, 0 pruned" in out.stdout
    client = MlflowClient(mlflow_server.url)
    for children in _children(client, "shared-mount").values():
        (t,) = [c for c in children if c.data.tags.get("baseline") == "false"]
        assert t.data.tags["claims_search.driver_node"] != t.data.tags["claims_search.rank_nodes"]
    assert (shared / "runs" / "shared-mount" / "search.json").exists()  # the state stays on the mount
    shutil.rmtree(shared, ignore_errors=True)

    out = outs["failing"]
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "no Transformer trial completed (0 trial(s) complete, 1 failed, 0 pruned; first failure:" in text
    assert "batch_tokens (32) must hold one full sequence" in text
    assert "succeeded" not in text
    mine = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("shared-mount").experiment_id])}
    failing = client.get_experiment_by_name("failing")
    theirs = {r.info.run_id for r in client.search_runs([failing.experiment_id])} if failing else set()
    assert mine and not mine & theirs


def test_no_subject_id_reaches_the_ray_job_logs_or_the_heads_logs(s3_search, ray_cluster, prepared):
    """Every job's log as the cluster serves it to anyone with dashboard access (`claims-search
    logs`; the searches above, the killed one included), and every log file of the head node
    (GCS, dashboard, job manager), hold no subject id of the data."""
    from claims_search.cluster import jobs
    from tests.test_search import prepared_ids, subject_ids_in

    ids = prepared_ids(prepared)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ray_cluster.client_env().items():
            mp.setenv(k, v)
        client = jobs.connect(ray_cluster.dashboard_url)
        listed = jobs.list_jobs(client)
        logs = [jobs.logs(client, j.submission_id) for j in listed if j.submission_id]
    assert len(logs) >= 2 and any("search private-cluster" in text for text in logs)  # the scan saw the searches
    head = [f for f in ray_cluster.temp_dirs[0].rglob("*") if f.is_file() and not f.is_symlink() and "logs" in f.parts]
    assert any(f.name.startswith("gcs_server") for f in head)
    assert not (hits := subject_ids_in([*logs, *(f.read_bytes() for f in head)], ids)), hits[:5]


@pytest.mark.browser
def test_the_mlflow_ui_shows_the_trials_and_the_frontier_picture(s3_search, mlflow_server, chromium, artifacts_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(NAME)
    parent = next(r for r in client.search_runs([exp.experiment_id])
                  if r.data.tags.get("claims_search.task") == "ckd_incidence"
                  and r.data.tags.get("claims_search.role") == "parent")
    page = chromium.new_page()
    page.goto(f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs")
    page.get_by_text("ckd_incidence", exact=True).first.wait_for(timeout=60_000)
    # Expand the task's parent run: its trial runs (named "<task>/w..-d..-h..") appear under it.
    row = page.locator('[role="row"]', has_text="ckd_incidence").first
    row.locator('[col-id="attributes.`Run Name`"] button').first.click()
    trials = page.get_by_text(re.compile(r"^ckd_incidence/w\d+-d\d+-h\d+$"))
    trials.first.wait_for(timeout=60_000)
    assert trials.count() == 3
    page.screenshot(path=str(artifacts_dir / "cluster-search-runs.png"), full_page=True)
    page.goto(f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/frontier.png")
    page.get_by_text("frontier.html", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_function(  # the preview <img> has really decoded (fetched from S3 through the server)
        "() => [...document.images].some(i => i.complete && i.naturalWidth > 200 && i.src.startsWith('blob:'))",
        timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "cluster-search-frontier.png"), full_page=True)
    page.close()


def test_a_trial_whose_train_node_is_lost_resumes_on_another_node_from_its_checkpoint(
        ray_cluster, mlflow_server, s3_server, s3_env, prepared, tmp_path):
    """A second Train-worker node joins; once the trial's checkpoint at step 200 is registered,
    every process of the node its Train worker runs on is SIGKILLed (the VM is gone). Ray Train
    restarts the worker group on the other node, which resumes from the checkpoint on S3."""
    import contextlib
    import threading
    import time

    import pyarrow.fs as pafs
    from mlflow.tracking import MlflowClient

    from claims_search import storage

    data = storage.upload(prepared, s3_server.uri("prepared-node-loss"))
    ray_cluster.add_node(2, {"worker_node": 1, "train_worker": 2})
    train_nodes = [i for i in range(1, len(ray_cluster.temp_dirs)) if i != 1]  # node 1 runs drivers only
    env = {**s3_env, "CLAIMS_SEARCH_STATE_DIR": str(tmp_path / "state")}
    done: dict = {}
    job = threading.Thread(target=lambda: done.update(out=submit(
        ray_cluster, mlflow_server, env, s3_server.uri("runs"), "--space", "tests/spaces/node_loss.yaml",
        "--data", data, "--name", "node-loss")))
    job.start()
    fs, root = storage.filesystem(s3_server.uri("runs", "node-loss", "trials"))

    def registered() -> bool:
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.base_name == "checkpoint_manager_snapshot.json":
                with fs.open_input_stream(info.path) as f:
                    if b"phase00_step_00000200" in f.read():
                        return True
        return False

    deadline = time.monotonic() + 900
    while not registered():
        assert job.is_alive() and time.monotonic() < deadline, done.get("out")
        time.sleep(0.5)
    (lost,) = [i for i in train_nodes if ray_cluster.runs_train_worker(i)]
    lost_id = ray_cluster.node_id(lost)
    (kept,) = [i for i in train_nodes if i != lost]
    assert ray_cluster.lose_node(lost)
    lost_at = time.monotonic()
    recovered = None
    while job.is_alive() and recovered is None:  # the restarted worker group checkpoints again
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.base_name == "checkpoint_manager_snapshot.json":
                with contextlib.suppress(OSError), fs.open_input_stream(info.path) as f:
                    if b"phase00_step_00000400" in f.read():
                        recovered = time.monotonic() - lost_at
        time.sleep(0.5)
    print(f"node lost; the trial checkpointed again on node {kept} {recovered} s later", file=sys.stderr)
    job.join(timeout=900)
    out = done["out"]
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "1 trial(s) complete, 0 failed, 0 pruned" in out.stdout

    (trial,) = [c for c in _children(MlflowClient(mlflow_server.url), "node-loss")["ckd_incidence"]]
    assert trial.data.tags["claims_search.rank_nodes"] == ray_cluster.node_id(kept) != lost_id
    (result,) = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.path.endswith("/pretrain/result.json")]
    with fs.open_input_stream(result) as f:
        pre = json.loads(f.read())
    assert (pre["resumed_from_step"], pre["step"]) == (200, 400)  # resumed, not restarted

