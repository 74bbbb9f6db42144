"""Submitting to a real multi-node Ray cluster (head with no trial CPUs + worker nodes), the
submit-side errors, the pure parts of the job edge and shared storage, and the job commands
against a head whose job server refuses for a while (transient refusals retried)."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claims_search.cluster import jobs
from claims_search.commands.entrypoint import build_entrypoint

from claims_search import storage
from claims_search.errors import ClaimsSearchError
from tests.local_http import LocalServer

pytest_plugins = ["tests.cluster_harness"]  # ray_cluster, mlflow_server (registered, not imported)
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nobody listens on (the harness's helper, imported late: it is a pytest plugin)."""
    from tests.cluster_harness import free_port as _free_port

    return _free_port()


# What the cluster test submits: a probe that asks for one CPU per task, as a trial does, and
# reports which node ran each task (see the `entrypoint` fixture to submit the smoke search).
WHERE = """
import json, ray
ray.init()
@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()
head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
print("WHERE " + json.dumps({"head": head, "ran": ray.get([where.remote() for _ in range(4)])}))
"""
ENTRYPOINT = ["python", "-c", WHERE]


@pytest.fixture
def entrypoint(request) -> list[str]:
    """The command `test_submit_follow_runs_on_worker_nodes_not_the_head` submits. To submit
    the smoke search instead, this is the one line (plus assertions on MLflow):
        return ["search", "--space", "smoke", "--data", str(request.getfixturevalue("prepared"))]
    """
    return ENTRYPOINT


def cli(*argv: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``claims-search ARGV`` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "claims_search.cli", *argv], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


# ---- the pure parts: entrypoint, runtime env, storage paths ----------------------------------

def test_a_search_without_a_name_gets_one_and_the_tracking_uri():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    cmd, experiment = build_entrypoint(
        ["search", "--space", "search_spaces/smoke.yaml", "--data", "s3://b/prepared"],
        tracking_uri="http://head:5000", storage_path="s3://b/runs", now=now, token="beef",
    )
    assert experiment == "smoke-20260102-030405-beef"
    assert cmd == (
        "python -m claims_search.cli search --space search_spaces/smoke.yaml --data s3://b/prepared "
        "--name smoke-20260102-030405-beef --tracking-uri http://head:5000 --storage s3://b/runs"
    )


def test_two_unnamed_searches_started_in_the_same_second_get_different_names():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    first, second = (build_entrypoint(["search", "--space", "smoke"], now=now)[1] for _ in range(2))
    assert first != second  # 6 random hex digits: a clash once in 16 million pairs
    assert first.startswith("smoke-20260102-030405-") and second.startswith("smoke-20260102-030405-")


def test_a_named_search_keeps_its_name_and_a_raw_command_runs_as_given():
    cmd, experiment = build_entrypoint(["search", "--name=ckd-v2", "--space", "smoke"])
    assert experiment == "ckd-v2" and cmd.count("--name") == 1
    cmd, experiment = build_entrypoint(["python", "-c", "print('a b')"])
    assert shlex.split(cmd) == ["python", "-c", "print('a b')"] and experiment is None
    with pytest.raises(ClaimsSearchError, match="nothing to run"):
        build_entrypoint([])


def test_the_runtime_env_uploads_the_project_without_venv_or_data():
    env = jobs.runtime_env(".", {"MLFLOW_TRACKING_URI": "http://head:5000"})
    assert env["working_dir"] == "." and env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://head:5000"}
    assert {".venv/", "data/", "mlruns/", "*.db", ".git/"} <= set(env["excludes"])
    remote = jobs.runtime_env("s3://bucket/claims-search.zip", {}, pip=["lightgbm"])
    assert "excludes" not in remote and remote["pip"] == ["lightgbm"]
    assert "working_dir" not in jobs.runtime_env(None, {})


def test_storage_paths_local_and_uri(tmp_path, monkeypatch):
    assert storage.is_uri("s3://bucket/x") and storage.is_uri("gs://b/x")
    assert storage.is_local("data/prepared") and storage.is_local(f"file://{tmp_path}")
    assert storage.join("s3://bucket/runs/", "exp", "trial_1") == "s3://bucket/runs/exp/trial_1"
    assert storage.normalize("rel/dir") == str(Path("rel/dir").resolve())
    assert storage.tune_storage("s3://bucket/runs") == ("s3://bucket/runs", None)
    with pytest.raises(ClaimsSearchError, match="multi-node"):
        storage.tune_storage(tmp_path, multi_node=True)
    monkeypatch.setenv("CLAIMS_SEARCH_SHARED_FS", "1")  # an NFS mount at the same path everywhere
    assert storage.tune_storage(tmp_path, multi_node=True) == (str(tmp_path), None)


def test_a_prepared_cache_on_remote_storage_is_copied_once_per_node(tmp_path):
    import fsspec

    bucket = fsspec.filesystem("memory")  # an in-process stand-in for a bucket, through fsspec
    bucket.pipe("/bucket/prepared/manifest.json", b'{"format_version": 1}')
    bucket.pipe("/bucket/prepared/labels/ckd_incidence.parquet", b"PAR1")
    local = storage.localize("memory://bucket/prepared", tmp_path)
    assert (local / "manifest.json").read_bytes() == b'{"format_version": 1}'
    assert (local / "labels" / "ckd_incidence.parquet").exists()
    bucket.pipe("/bucket/prepared/manifest.json", b"changed")
    assert storage.localize("memory://bucket/prepared", tmp_path) == local  # reused, not re-read
    assert (local / "manifest.json").read_bytes() == b'{"format_version": 1}'
    with pytest.raises(ClaimsSearchError, match="not found"):
        storage.require("memory://bucket/missing", "prepared cache")


# ---- errors on the submitting side, each one line and quick -----------------------------------

def test_an_unreachable_head_fails_within_seconds():
    port = free_port()  # nobody listens there
    start = time.monotonic()
    out = cli("submit", "--address", f"http://127.0.0.1:{port}", "--wait", "--", *ENTRYPOINT, timeout=60)
    assert out.returncode == 2
    assert "Ray head not reachable" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 20


# ---- on the real multi-node cluster ------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.cluster
def test_submit_follow_runs_on_worker_nodes_not_the_head(ray_cluster, entrypoint):
    env = ray_cluster.client_env()
    out = cli("submit", "--address", ray_cluster.dashboard_url, "--follow", "--", *entrypoint, env=env)
    assert out.returncode == 0, out.stderr + out.stdout
    job_id = out.stdout.split("job_id: ", 1)[1].split()[0]
    assert f"job {job_id} succeeded" in out.stdout
    assert "WHERE {" in out.stdout  # --follow streamed the job's own output

    log = cli("logs", job_id, "--address", ray_cluster.dashboard_url, env=env)
    where = json.loads(log.stdout.rsplit("WHERE ", 1)[1].splitlines()[0])  # the output, not the echo
    assert len(where["head"]) == 1 and len(where["ran"]) == 4
    assert where["head"][0] not in where["ran"]  # the head has no CPUs for trials

    listed = cli("jobs", "--address", ray_cluster.dashboard_url, env=env)
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout


@pytest.mark.ray
@pytest.mark.cluster
def test_a_failing_runtime_env_is_reported_with_its_reason(ray_cluster):
    missing = "file:///nonexistent/claims-search-project.zip"  # the cluster can't fetch it
    start = time.monotonic()
    out = cli("submit", "--address", ray_cluster.dashboard_url, "--working-dir", missing,
              "--wait", "--timeout", "120", "--", "python", "-c", "print(1)", env=ray_cluster.client_env())
    assert out.returncode == 2, out.stdout
    assert "failed" in out.stderr and "claims-search-project.zip" in out.stderr
    assert time.monotonic() - start < 120


@pytest.mark.ray
@pytest.mark.cluster
def test_a_space_asking_for_gpus_the_cluster_lacks_is_refused_before_submitting(ray_cluster, tmp_path):
    space = (REPO / "search_spaces" / "smoke.yaml").read_text()
    gpu_space = tmp_path / "gpu.yaml"
    gpu_space.write_text(space.replace("gpus_per_worker: 0", "gpus_per_worker: 1"))
    out = cli("submit", "--address", ray_cluster.dashboard_url, "--", "search", "--space",
              str(gpu_space), "--data", "/shared/prepared", env=ray_cluster.client_env())
    assert out.returncode == 2
    assert "needs 1 GPU" in out.stderr and "cluster has 0" in out.stderr


@pytest.mark.ray
@pytest.mark.cluster
def test_a_tracking_server_that_refuses_our_host_is_caught_before_submitting(ray_cluster, mlflow_server):
    # 0.0.0.0 reaches the server but is not in its --allowed-hosts: MLflow answers 403.
    refused = f"http://0.0.0.0:{mlflow_server.port}"
    out = cli("submit", "--address", ray_cluster.dashboard_url, "--tracking-uri", refused,
              "--", *ENTRYPOINT, env=ray_cluster.client_env())
    assert out.returncode == 2
    assert "refuses the host" in out.stderr and "--allowed-hosts" in out.stderr
    down = f"http://127.0.0.1:{free_port()}"
    out = cli("submit", "--address", ray_cluster.dashboard_url, "--tracking-uri", down,
              "--", *ENTRYPOINT, env=ray_cluster.client_env())
    assert out.returncode == 2 and "not reachable" in out.stderr


@pytest.mark.ray
@pytest.mark.cluster
def test_a_running_job_can_be_stopped(ray_cluster):
    env = ray_cluster.client_env()
    out = cli("submit", "--address", ray_cluster.dashboard_url, "--no-upload", "--",
              "python", "-c", "import time; time.sleep(600)", env=env)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("job_id: ", 1)[1].split()[0]
    stopped = cli("stop", job_id, "--address", ray_cluster.dashboard_url, env=env)
    assert stopped.returncode == 0 and f"job {job_id}: stopping" in stopped.stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = cli("jobs", "--address", ray_cluster.dashboard_url, env=env).stdout
        row = next(line for line in listed.splitlines() if job_id in line)
        if "STOPPED" in row:
            break
        time.sleep(2)
    assert "STOPPED" in row


def test_a_transient_refusal_is_retried_and_a_permanent_one_is_one_line():
    """A fresh head's job agent refuses until it is ready: retried with backoff. A real client
    stand-in is enough here: the retry is ours, the refusal text is Ray's."""
    class Head:
        def __init__(self, refusals):
            self.refusals, self.calls = refusals, 0

        def submit_job(self, **kw):
            self.calls += 1
            if self.calls <= self.refusals:
                raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                                   "please try again later.")
            return "raysubmit_ok"

    head = Head(refusals=2)
    assert jobs.submit(head, "echo", {}).job_id == "raysubmit_ok" and head.calls == 3
    assert jobs.is_transient(RuntimeError("No available agent to submit job, please try again later"))
    assert not jobs.is_transient(RuntimeError("runtime_env: working_dir not found"))

    class Refusing:
        def submit_job(self, **kw):
            raise RuntimeError("Request failed with status code 400: bad runtime env\ndetails...")

    with pytest.raises(ClaimsSearchError, match="^submit: the cluster refused the job: Request failed") as e:
        jobs.submit(Refusing(), "echo", {})
    assert "\n" not in str(e.value)


# ---- a head that refuses for a while (its job agent not ready yet) ------------------------------

AGENT_NOT_READY = "No available agent to submit job, please try again later."  # Ray's own words
JOB = {"type": "SUBMISSION", "submission_id": "raysubmit_fresh", "job_id": None, "status": "SUCCEEDED",
       "entrypoint": "python -m claims_search.cli search --name ckd-v2", "start_time": 1767225600000,
       "metadata": {"experiment": "ckd-v2"}}


class RefusingHead(LocalServer):
    """A real HTTP server on localhost that answers Ray's Jobs API the way a head does (the
    routes and bodies `ray.job_submission.JobSubmissionClient` reads), except that each Jobs API
    route is first refused ``refusals`` times (503 and the words of a head whose job agent is not
    up yet); an unknown job is a 404 at once, as Ray answers. The real JobSubmissionClient talks
    to it. ``seen`` counts the requests per route."""

    def __init__(self, refusals: int):
        import collections

        import ray

        self.refusals, self.seen = refusals, collections.Counter()
        answers = {
            "GET /api/version": {"version": "4", "ray_version": ray.__version__, "ray_commit": "?",
                                 "session_name": "fresh"},
            "GET /api/jobs/": [JOB],
            "GET /api/jobs/raysubmit_fresh": JOB,
            "GET /api/jobs/raysubmit_fresh/logs": {"logs": "search ckd-v2: started\n"},
            "POST /api/jobs/raysubmit_fresh/stop": {"stopped": True},
        }

        def answer(method: str, path: str, headers: dict, body: bytes):
            route = f"{method} {path.split('?')[0]}"
            self.seen[route] += 1
            if route not in answers:
                code, text = 404, f"Job {path.split('/')[3]} does not exist"  # what Ray says, not refused first
            elif route != "GET /api/version" and self.seen[route] <= self.refusals:
                code, text = 503, AGENT_NOT_READY
            else:
                code, text = 200, json.dumps(answers[route])
            return code, {"Content-Type": "application/json" if code == 200 else "text/plain"}, text.encode()

        super().__init__(answer)


def claims_search(*argv: str) -> int:
    """``claims-search ARGV`` in this process (its exit status; output through capsys)."""
    from claims_search.cli import main

    return main(list(argv))


@pytest.fixture
def head_not_ready_twice():
    head = RefusingHead(refusals=2)
    yield head
    head.close()


def test_jobs_logs_stop_and_waiting_retry_a_head_that_is_not_ready_yet(head_not_ready_twice, capsys):
    """Each command's request is refused twice, then answered: the user sees the answer (about
    3 s later: the retries wait 1 s, then 2 s). The commands run in this process, through the
    CLI's entry point, to spare the suite three interpreter start-ups."""
    head = head_not_ready_twice
    assert claims_search("jobs", "--address", head.url) == 0
    listed = capsys.readouterr().out
    assert "raysubmit_fresh" in listed and "SUCCEEDED" in listed and "ckd-v2" in listed
    assert claims_search("logs", "raysubmit_fresh", "--address", head.url) == 0
    assert capsys.readouterr().out == "search ckd-v2: started\n"
    assert claims_search("stop", "raysubmit_fresh", "--address", head.url) == 0
    assert capsys.readouterr().out == "job raysubmit_fresh: stopping\n"
    # `submit --wait` and `logs --follow` poll the job's status the same way.
    assert jobs.wait(jobs.connect(head.url), "raysubmit_fresh", poll_s=0.1) == "SUCCEEDED"
    assert {route: n for route, n in head.seen.items() if route != "GET /api/version"} == {
        "GET /api/jobs/": 3, "GET /api/jobs/raysubmit_fresh/logs": 3, "POST /api/jobs/raysubmit_fresh/stop": 3,
        "GET /api/jobs/raysubmit_fresh": 3}


def test_a_refusal_that_outlasts_the_retries_or_is_permanent_is_one_line(head_not_ready_twice, capsys):
    head = head_not_ready_twice
    # A permanent refusal (an unknown job) is not retried.
    assert claims_search("logs", "raysubmit_gone", "--address", head.url) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "claims-search logs: error: job raysubmit_gone: Request failed with status code 404: "
        "Job raysubmit_gone does not exist."]
    assert head.seen["GET /api/jobs/raysubmit_gone/logs"] == 1
    # A head that stays unready: bounded (here 2 attempts instead of the commands' 6), then one line.
    client = jobs.connect(head.url)
    with pytest.raises(ClaimsSearchError) as e:
        jobs.retrying(lambda: client.get_job_logs("raysubmit_fresh"), "job raysubmit_fresh", attempts=2)
    assert str(e.value) == ("job raysubmit_fresh: still refused after 2 attempts over 1 s: Request failed with "
                            f"status code 503: {AGENT_NOT_READY}.")
    assert head.seen["GET /api/jobs/raysubmit_fresh/logs"] == 2


def test_waiting_with_a_timeout_is_not_stretched_by_the_retries():
    """`submit --wait --timeout 2` against a head that keeps refusing: the retries stop at the
    timeout (here after 1 s of them), not after their full 23 s."""
    head = RefusingHead(refusals=100)
    try:
        client = jobs.connect(head.url)
        t0 = time.monotonic()
        with pytest.raises(ClaimsSearchError, match="^job raysubmit_fresh: still refused after 2 attempts over 1 s"):
            jobs.wait(client, "raysubmit_fresh", timeout=2, poll_s=0.1)
        assert time.monotonic() - t0 < 3
    finally:
        head.close()
