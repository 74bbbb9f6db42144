"""The search end to end: a real local Ray instance, real Optuna, a real MLflow SQLite store.

One smoke search runs once per session (module fixture); the tests read what it left in MLflow
and on disk. The resume test interrupts a second search mid-trial by killing its Ray instance
and finishes it with --resume.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TASKS = ["ckd_incidence", "antihypertensive_start"]
RESUMABLE = Path(__file__).parent / "spaces" / "resumable.yaml"


def _kill_ray_under(tmp_root: str) -> None:
    """Stop the Ray processes of one test's own Ray instance (never `ray stop`: it would stop
    every Ray instance on the machine)."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(tmp_root in part for part in p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def search_cmd(prepared, workdir: Path, name: str, space="smoke", *extra):
    return [sys.executable, "-m", "claims_search.cli", "search", "--space", str(space), "--data", str(prepared),
            "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--name", name,
            "--storage", str(workdir / "runs"), "--no-progress", *extra]


class RaySandbox:
    """Runs commands whose local Ray instance lives under a short private temp dir."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="csr-", dir="/tmp")
        self.env = {**os.environ, "RAY_TMPDIR": self.root, "PYTHONUNBUFFERED": "1"}

    def run(self, cmd, timeout=900):
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, cmd, log: Path):
        return subprocess.Popen(cmd, env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    def close(self):
        _kill_ray_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def smoke_search(prepared, tmp_path_factory):
    work = tmp_path_factory.mktemp("search")
    box = RaySandbox()
    try:
        proc = box.run(search_cmd(prepared, work, "smoke-e2e"))
        keep_ray_logs(box.root, work / "ray-logs")  # for the privacy scan
    finally:
        box.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout + proc.stderr  # what the user sees on the terminal


def keep_ray_logs(ray_root: str, dest: Path) -> None:
    """Copy every file of the Ray sessions' ``logs`` folders under ``ray_root`` (drivers',
    workers', raylet's, GCS's, dashboard's, the jobs') to ``dest``."""
    for f in Path(ray_root).rglob("*"):
        if f.is_file() and not f.is_symlink() and "logs" in f.relative_to(ray_root).parts:
            target = dest / f.relative_to(ray_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)


# A whole 7-digit number (the fixture's ids), not digits inside a float's expansion (1.6836622170003466).
_NUMBERS = re.compile(rb"(?<![\d.])(\d{7})(?!\d)")


def subject_ids_in(blobs, ids: set[str]) -> list[str]:
    """Which of ``ids`` occur as whole numbers in any of ``blobs`` (bytes or str): linear in
    their size, whatever the number of ids."""
    found = set()
    for b in blobs:
        found |= {m.decode() for m in _NUMBERS.findall(b if isinstance(b, bytes) else b.encode())}
    return sorted(found & ids)


def prepared_ids(prepared) -> set[str]:
    """Every subject id of the prepared data, as text."""
    import pyarrow.parquet as pq

    ids = {str(i) for i in pq.read_table(Path(prepared) / "subjects.parquet", columns=["subject_id"])
           .column(0).to_pylist()}
    assert len(ids) == 2000 and {len(i) for i in ids} == {7}  # conftest: 7-digit ids, no false hits
    return ids


def _client(work):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def has_verdict(task: str, out: str) -> bool:
    """A recommendation, or the plain statement that the tuning split cannot tell sizes apart
    (the smoke split has ~150 samples: both are honest outcomes)."""
    return f"{task}: recommended" in out or f"{task}: the tuning split is too small to tell" in out


def test_the_search_prints_a_recommendation_for_both_tasks(smoke_search):
    _, out = smoke_search
    for task in TASKS:
        assert has_verdict(task, out), out[-3000:]


def test_the_choice_is_confirmed_once_on_held_out_patients(smoke_search, prepared):
    """After the search chose, the recommended, best and baseline models are scored on held_out:
    in the output and as metrics of each task's parent run.

    Nothing read held_out before: every run the search trained (each trial's pretraining and
    fine-tunings, each task's LightGBM) records in its result.json the splits its cache served
    (`Cache.splits_read`), and none lists held_out; the confirmation's scoring records held_out,
    and nothing else, in the outbox."""
    from claims_search.data.cache import Cache

    work, out = smoke_search
    search = work / "runs" / "smoke-e2e"
    trained = [*search.glob("trials/*/*/result.json"), *search.glob("baseline/*/result.json")]
    read = {str(p.relative_to(search)): json.loads(p.read_text())["splits_read"] for p in trained}
    assert len(read) == 3 * (1 + len(TASKS)) + len(TASKS), sorted(read)  # 3 trials (pretrain + 2 tasks), 2 baselines
    assert all(splits == ["train", "tuning"] for splits in read.values()), read
    entries = [json.loads(x) for x in (search / "outbox" / "outbox.jsonl").read_text().splitlines() if x.strip()]
    confirmed = {e["payload"]["task"]: e["payload"]["roles"] for e in entries if e["kind"] == "confirmation"}
    assert sorted(confirmed) == sorted(TASKS)
    for task, roles in confirmed.items():
        assert {role: got.get("splits_read") for role, got in roles.items()} == {
            role: ["held_out"] for role in roles}, (task, roles)
    assert out.count("held-out confirmation (scored once, after the choice") == len(TASKS)
    client = _client(work)
    exp = client.get_experiment_by_name("smoke-e2e")
    cache = Cache.open(prepared)
    for r in client.search_runs([exp.experiment_id], max_results=500):
        if r.data.tags.get("claims_search.role") != "parent":
            continue
        m, task = r.data.metrics, r.data.tags["claims_search.task"]
        assert m["held_out_recommended_n"] == len(cache.labels(task, "held_out"))
        assert m["held_out_recommended_auprc_low"] <= m["held_out_recommended_auprc"] <= m["held_out_recommended_auprc_high"]
        assert "held_out_best_auprc" in m and r.data.tags["held_out_best_trial"]


def test_a_summary_line_says_how_the_trials_ended_and_where_the_time_went(smoke_search):
    _, out = smoke_search
    assert "3 trial(s) complete, 0 failed, 0 pruned" in out
    assert "% of trial wall time in the training loop" in out
    # ...and one line of where it went, phase by phase (largest first).
    (line,) = [ln for ln in out.splitlines() if ln.startswith("trial wall time: ")]
    assert "pretrain" in line and "finetune" in line and "worker start" in line and "other" in line


def test_the_trial_time_benchmark_reads_the_phases_back_from_mlflow(smoke_search):
    """bench/trial_time.py's table, on this search's MLflow store (its figures are in docs/)."""
    import importlib.util

    work, _ = smoke_search
    spec = importlib.util.spec_from_file_location("trial_time", Path(__file__).parents[1] / "bench" / "trial_time.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    trials = bench.trial_metrics(f"sqlite:///{work / 'mlflow.db'}", "smoke-e2e")
    rows, loop_share = bench.table(trials)
    assert len(trials) == 3 and 0 < loop_share < 1
    assert [r[0] for r in rows] == [p for p in bench.ORDER if p in {r[0] for r in rows}]
    assert {"pretrain", "finetune", "worker_start", "eval", "other"} <= {r[0] for r in rows}
    assert sum(share for _, _, share in rows) == pytest.approx(1.0, abs=0.02)


def test_a_search_prints_its_own_lines_not_its_libraries_chatter(smoke_search):
    _, out = smoke_search
    for noise in ("Creating initial MLflow database tables", "A new study created", "Configuration for experiment",
                  "TensorBoard", "Token authentication is enabled", "Traceback"):
        assert noise not in out, noise


def test_mlflow_holds_a_parent_per_task_and_tagged_children(smoke_search):
    work, _ = smoke_search
    client = _client(work)
    exp = client.get_experiment_by_name("smoke-e2e")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = {r.data.tags["claims_search.task"]: r for r in runs if r.data.tags.get("claims_search.role") == "parent"}
    assert sorted(parents) == sorted(TASKS)
    for task, parent in parents.items():
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        trials = [c for c in children if c.data.tags.get("trial_id") != "baseline-lightgbm"]
        assert len(trials) == 3, task  # smoke.yaml: three trials
        assert any(c.data.tags.get("trial_id") == "baseline-lightgbm" for c in children)
        assert all(c.data.tags.get("pareto") in ("true", "false") for c in children)
        assert sum(c.data.tags.get("recommended") == "true" for c in children) == 1
        complete = [c for c in trials if c.data.tags.get("status") == "complete"]
        for c in complete:
            assert {"width", "depth", "heads", "n_params"} <= set(c.data.params)
            assert "auprc" in c.data.metrics and "auprc_low" in c.data.metrics and "cost" in c.data.metrics
            # Where the trial's time went, one metric per phase (issue 13: a trial's time budget).
            phases = {"setup", "scheduling_wait", "worker_start", "cache", "pretrain", "eval", "fit_other", "upload"}
            assert {f"time_{p}_s" for p in phases} | {f"time_finetune_{t}_s" for t in TASKS} <= set(c.data.metrics)
            timed = sum(v for k, v in c.data.metrics.items() if k.startswith("time_") and k.endswith("_s"))
            assert 0 < timed <= c.data.metrics["trial_wall_s"] + 1e-6
        arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"frontier.png", "frontier.html", "frontier.csv"} <= arts


def test_the_recommended_model_is_registered_with_its_alias(smoke_search):
    from claims_search.tracking.tracker import registered_name

    work, _ = smoke_search
    client = _client(work)
    for task in TASKS:
        mv = client.get_model_version_by_alias(registered_name("smoke-e2e", task), "recommended")
        assert mv.version


def test_frontier_and_recommend_commands_read_the_search_back(smoke_search):
    work, _ = smoke_search
    uri = f"sqlite:///{work / 'mlflow.db'}"
    rec = subprocess.run([sys.executable, "-m", "claims_search.cli", "recommend", "--experiment", "smoke-e2e",
                          "--tracking-uri", uri, "--json"], capture_output=True, text=True, timeout=300)
    assert rec.returncode == 0, rec.stderr
    data = json.loads(rec.stdout)
    assert sorted(data) == sorted(TASKS)
    assert all(d["recommended"]["cost"] > 0 for d in data.values())
    # The search published its 4 more bootstrap seeds; 0 turns the stability check off.
    assert all(d["agreement_seeds"] == 5 for d in data.values() if d["agreement"] is not None)
    off = subprocess.run([sys.executable, "-m", "claims_search.cli", "recommend", "--experiment", "smoke-e2e",
                          "--tracking-uri", uri, "--json", "--stability-seeds", "0"],
                         capture_output=True, text=True, timeout=300)
    assert off.returncode == 0 and all(d["agreement"] is None for d in json.loads(off.stdout).values())
    fr = subprocess.run([sys.executable, "-m", "claims_search.cli", "frontier", "--experiment", "smoke-e2e",
                         "--tracking-uri", uri], capture_output=True, text=True, timeout=300)
    assert fr.returncode == 0, fr.stderr
    assert all(t in fr.stdout for t in TASKS)


def test_nothing_patient_level_reaches_mlflow_logs_or_tune_files(smoke_search, prepared):
    """No subject id of the data appears in any MLflow param, metric name, tag or artifact (the
    registered models included), in the search's output, in any log file of its Ray instance
    (driver, workers, raylet, GCS, dashboard), or in Ray Tune's files; the per-patient
    predictions exist, but only under --storage."""
    work, stdout = smoke_search
    ids = prepared_ids(prepared)
    client = _client(work)
    exp = client.get_experiment_by_name("smoke-e2e")
    texts = [stdout]

    def walk(run_id, path=None):
        for a in client.list_artifacts(run_id, path):
            if a.is_dir:
                yield from walk(run_id, a.path)
            else:
                yield a.path

    for r in client.search_runs([exp.experiment_id], max_results=500):
        texts.append(json.dumps([r.data.params, r.data.tags, sorted(r.data.metrics)]))
        for path in walk(r.info.run_id):
            # No prediction file (a folder or file named predictions*); the registered model's
            # source code (code/claims_search/runs/meds_predictions.py) is no such file.
            parts = Path(path).parts
            assert not path.endswith(".parquet") and not any(p.startswith("predictions") for p in parts), path
            texts.append(Path(client.download_artifacts(r.info.run_id, path)).read_bytes())
    tune = work / "runs" / "smoke-e2e" / "tune"
    tune_files = [f for f in tune.rglob("*") if f.is_file()]
    assert any(f.name.startswith("experiment_state") for f in tune_files)  # the scan saw Tune's files
    texts += [f.read_bytes() for f in tune_files]
    ray_logs = [f for f in (work / "ray-logs").rglob("*") if f.is_file()]
    assert any(f.name.startswith("raylet") for f in ray_logs) and any(f.name.startswith("worker-") for f in ray_logs)
    texts += [f.read_bytes() for f in ray_logs]
    assert not (hits := subject_ids_in(texts, ids)), hits[:5]
    kept = list((work / "runs" / "smoke-e2e").rglob("predictions/tuning.parquet"))
    assert len(kept) >= 3 * len(TASKS)  # every trial's, per task (and the baseline's)


def test_resume_finishes_a_search_ray_died_under_mid_trial_without_rerunning_finished_trials(prepared, tmp_path):
    """Ray goes away mid-trial (SIGKILL to every process of the search's Ray instance, not to
    the search's own process) once one trial has finished and another has checkpointed its
    pretraining but not its fine-tuning (tests/spaces/resumable.yaml: one task, a long
    fine-tuning, so that the kill lands inside it). The driver dies with Ray; the user gets one line saying so
    and the command that finishes the search, not only a raylet dump. That `search --resume`
    finishes the search: the finished trial is not trained again, the interrupted one continues
    from its checkpoint (its pretraining is not run again), the Optuna study ends with the three
    planned trials COMPLETE and none RUNNING, and MLflow has one child run per trial and task.
    (A driver SIGKILLed mid-trial and resubmitted through `submit`: tests/test_cluster_search.py.)"""
    import collections

    import optuna

    box = RaySandbox()
    # A driver notices that Ray's GCS is gone after this long (Ray's default: 60 s).
    box.env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "10"
    t0 = time.monotonic()
    search = tmp_path / "runs" / "resumable"  # the search's storage and state folder
    trials = search / "trials"
    try:
        outbox = search / "outbox" / "outbox.jsonl"
        proc = box.start(search_cmd(prepared, tmp_path, "resumable", RESUMABLE), tmp_path / "first.log")

        def finished_trials():
            if not outbox.exists():
                return set()
            rows = [json.loads(x) for x in outbox.read_text().splitlines() if x.strip()]
            return {r["payload"]["trial_id"] for r in rows if r["kind"] == "trial"} - {"baseline-lightgbm"}

        def finished_on_disk():  # a trial writes its final.json before it reports to Tune
            return {p.parent.name for p in trials.glob("*/final.json")}

        def in_progress():
            """A trial that has not finished (no final.json) and whose Ray Train run registered
            the checkpoint of its finished pretraining (``phase00_done``) but not of its
            fine-tuning (``phase01_done``), once another trial has finished; else None."""
            done = finished_on_disk()
            if not done:
                return None
            for snap in trials.glob("*/train/ray/checkpoint_manager_snapshot.json"):
                trial = snap.relative_to(trials).parts[0]
                try:
                    text = snap.read_text()
                except OSError:
                    continue
                if "phase00_done" in text and "phase01_done" not in text and trial not in done and not (trials / trial / "final.json").exists():
                    return trial
            return None

        deadline = time.monotonic() + 600
        while not in_progress() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        interrupted = in_progress()
        assert interrupted, (tmp_path / "first.log").read_text()[-3000:]
        _kill_ray_under(box.root)  # every Ray process of this instance; the search's process stays
        killed = time.monotonic() - t0
        rc = proc.wait(timeout=300)
        _kill_ray_under(box.root)  # anything Ray started meanwhile
        text = (tmp_path / "first.log").read_text()
        assert rc != 0
        (line,) = [ln for ln in text.splitlines() if ln.startswith("claims-search search: error: search resumable")]
        assert "mid-search" in line and "--name resumable" in line and line.endswith("--resume")
        first = finished_on_disk()
        # Everything is dead now: the interrupted trial provably had not finished.
        assert first and interrupted not in first and not (trials / interrupted / "final.json").exists()
        done = {t: (trials / t / "pretrain" / "result.json").stat().st_mtime for t in first}
        # Its pretraining's outcome, on storage (the Ray Train run's folder goes once it finishes).
        pretrained = json.loads((trials / interrupted / "train" / "phases" / "0" / "outcome.json").read_text())

        again = box.run(search_cmd(prepared, tmp_path, "resumable", RESUMABLE, "--resume"))
        print(json.dumps({"killed_at_s": killed, "resumed_s": time.monotonic() - t0 - killed}), file=sys.stderr)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert has_verdict("ckd_incidence", again.stdout), again.stdout[-3000:]
        # Finished trials were not trained again; the search still has three trials in all.
        for t, mtime in done.items():
            assert (trials / t / "pretrain" / "result.json").stat().st_mtime == mtime
        assert len(finished_trials()) == 3
        # The interrupted trial finished, from its checkpoint: its pretraining did not run again
        # (a second run would have taken another wall time).
        assert interrupted in finished_trials() and (trials / interrupted / "final.json").exists()
        result = json.loads((trials / interrupted / "pretrain" / "result.json").read_text())
        assert (result["val_loss"], result["cost"]["wall_s"]) == (pretrained["val_loss"], pretrained["cost"]["wall_s"])
    finally:
        box.close()

    # The study: the three planned trials COMPLETE, nothing left RUNNING (a trial Optuna proposed
    # just before the kill and Tune never ran would be told FAIL, marked orphaned).
    study = optuna.load_study(study_name="resumable", storage=f"sqlite:///{search / 'optuna.db'}")
    states = collections.Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] == 3 and states["RUNNING"] == 0, states
    # The rest were never trained: proposed before the kill and never started (orphaned), or a
    # repeat of a configuration already trained or resuming, told FAIL at once (duplicate).
    assert all(t.user_attrs.get("orphaned") or t.user_attrs.get("duplicate")
               for t in study.trials if t.state.name != "COMPLETE"), [(t.state.name, t.user_attrs) for t in study.trials]
    complete = [t.params for t in study.trials if t.state.name == "COMPLETE"]
    assert all(a != b for i, a in enumerate(complete) for b in complete[i + 1:]), complete  # no size trained twice
    # MLflow: one child run per trial and task, the interrupted trial's included.
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("resumable")
    children = collections.Counter(
        (r.data.tags["claims_search.task"], r.data.tags["trial_id"])
        for r in client.search_runs([exp.experiment_id], max_results=500)
        if r.data.tags.get("claims_search.role") == "trial")
    assert set(children.values()) == {1}, children
    assert sorted(children) == sorted(("ckd_incidence", t) for t in finished_trials())
