"""The Ray Job Submission edge: submit a claims-search command to a cluster, follow it, stop it.

Talks to the head's dashboard (``http://HEAD:8265``) through ``ray.job_submission``. Every
failure the submitter can see is turned into one ``ClaimsSearchError`` line before or instead of
waiting: an unreachable head (short HTTP timeout, never the SDK's unbounded one), a cluster that
wants an auth token, a tracking server that is down or refuses our Host header (MLflow answers
403 for hosts missing from ``--allowed-hosts``), a cluster without the CPUs/GPUs one trial of the
space needs (the nodes' totals from the dashboard's state API), and a job that fails (its
runtime env included) with the tail of its log. Every request to the job server (submit, list,
logs, stop, the status polling of ``wait``) retries a transient refusal with bounded backoff
(``retrying``: a fresh head's job agent that is not up yet, a proxy's 502/503/504), then says in
one line what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO, TypeVar

from claims_search.errors import ClaimsSearchError
from claims_search.storage import one_line

# Never uploaded with the working dir: the venv, VCS data, local data and run outputs.
# (Ray also honours .gitignore; these hold when there is none.)
DEFAULT_EXCLUDES = [
    ".venv/", "venv/", ".git/", "__pycache__/", "*.pyc", "*.egg-info/", ".pytest_cache/",
    "data/", "demo/", "runs/", "mlruns/", "mlartifacts/", "*.db", "test-artifacts/", "build/",
    "dist/", "*.ckpt", "*.pt",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
PROBE_TIMEOUT_S = 5.0
TAIL_LINES = 30
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Submission:
    """What a submission returns: the job id and, for a search, its MLflow experiment."""

    job_id: str
    entrypoint: str
    experiment: str | None


# ---- connecting ---------------------------------------------------------------------------

def auth_token() -> str | None:
    """The cluster token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    if token := os.environ.get("RAY_AUTH_TOKEN"):
        return token.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    return None


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _base(address: str) -> str:
    address = address.rstrip("/")
    return address if "://" in address else f"http://{address}"


def probe_head(address: str, token: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Check the head's dashboard answers within ``timeout``; return its Ray version."""
    import requests

    url = f"{_base(address)}/api/version"
    try:
        r = requests.get(url, headers=_headers(token), timeout=timeout)
    except requests.RequestException as e:
        raise ClaimsSearchError(
            f"{address}: Ray head not reachable within {timeout:g} s "
            f"({type(e).__name__}); is the dashboard port forwarded?"
        ) from None
    if r.status_code in (401, 403):
        problem = "wants an auth token" if r.status_code == 401 else "rejected our auth token"
        raise ClaimsSearchError(
            f"{address}: the cluster {problem} ({r.status_code}); set RAY_AUTH_TOKEN to the "
            "cluster's token (on the head: `ray get-auth-token`)"
        )
    if r.status_code != 200:
        raise ClaimsSearchError(f"{address}: /api/version answered {r.status_code}; not a Ray dashboard?")
    return r.json().get("ray_version", "?")


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    # The SDK lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it is given;
    # an explicit --address must win.
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str, timeout: float = PROBE_TIMEOUT_S):
    """A ``JobSubmissionClient`` for ``http://HEAD:8265``, after a short reachability probe."""
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    probe_head(address, token, timeout)
    with _explicit_address():
        try:
            return JobSubmissionClient(_base(address), headers=_headers(token))
        except Exception as e:  # the SDK raises ConnectionError/RuntimeError/AuthenticationError
            raise ClaimsSearchError(f"{address}: {one_line(e)}") from None


# ---- pre-flight checks --------------------------------------------------------------------

def probe_tracking(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check an ``http(s)://`` MLflow server answers an API call with our Host header.

    ``/health`` is exempt from MLflow's host check, so this asks for one experiment instead.
    Other URIs (``sqlite:///``, ``databricks``) are not probed.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
    try:
        r = requests.get(url, params={"max_results": 1}, timeout=timeout)
    except requests.RequestException as e:
        raise ClaimsSearchError(
            f"{uri}: MLflow tracking server not reachable within {timeout:g} s ({type(e).__name__})"
        ) from None
    if r.status_code == 403:
        host = uri.split("://", 1)[1].split("/", 1)[0]
        raise ClaimsSearchError(
            f"{uri}: MLflow refuses the host {host!r} (403): add it to the server's --allowed-hosts"
        )
    if r.status_code != 200:
        raise ClaimsSearchError(f"{uri}: MLflow answered {r.status_code}: {r.text[:200].strip()}")


def cluster_resources(address: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, float]:
    """Total resources of the cluster's alive nodes (``ray.cluster_resources()``-style), read
    from the dashboard's state API: no job, no driver, one HTTP request."""
    import requests

    url = f"{_base(address)}/api/v0/nodes"
    try:
        r = requests.get(url, params={"limit": 10000, "detail": "true"},
                         headers=_headers(auth_token()), timeout=timeout)
        r.raise_for_status()
        nodes = r.json()["data"]["result"]["result"]
    except (requests.RequestException, KeyError, ValueError) as e:
        raise ClaimsSearchError(f"{address}: cannot list the cluster's nodes: {one_line(e)}") from None
    total: dict[str, float] = {}
    for node in nodes:
        if node.get("state") != "ALIVE":
            continue
        for k, v in (node.get("resources_total") or {}).items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


def autoscales(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the cluster has an autoscaler with node types of its own (the dashboard's cluster
    status; a cluster of `ray start` nodes has a read-only one: ``autoscaler.scales``)."""
    import requests

    from claims_search.cluster.autoscaler import scales

    try:
        r = requests.get(f"{_base(address)}/api/cluster_status", headers=_headers(auth_token()), timeout=timeout)
        r.raise_for_status()
        data = r.json()["data"]
        return scales(data.get("clusterStatus") or data.get("cluster_status"))
    except (requests.RequestException, KeyError, ValueError, AttributeError):
        return False  # no such endpoint or no answer: judge by the nodes up now


# ---- the job ------------------------------------------------------------------------------

def runtime_env(
    working_dir: str | None,
    env_vars: dict[str, str],
    excludes: list[str] | None = None,
    pip: list[str] | None = None,
) -> dict:
    """The job's runtime env: the project (a local dir to upload, or a remote ``.zip`` URI),
    environment variables, and optionally pip packages (e.g. ``claims-search==0.1.0``)."""
    env: dict = {"env_vars": dict(env_vars)}
    if working_dir:
        env["working_dir"] = working_dir
        if "://" not in working_dir:
            env["excludes"] = list(DEFAULT_EXCLUDES if excludes is None else excludes)
    if pip:
        env["pip"] = list(pip)
    return env


def submit(client, entrypoint: str, runtime_env: dict, experiment: str | None = None) -> Submission:
    """Submit ``entrypoint`` with ``runtime_env``; returns the job id (the submission id)."""
    metadata = {"tool": "claims-search"}
    if experiment:
        metadata["experiment"] = experiment
    job_id = retrying(lambda: client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata),
                      "submit: the cluster refused the job")
    return Submission(job_id, entrypoint, experiment)


# ~1+2+4+8+8 = 23 s of waiting: what a freshly started head's job agent needs.
RETRY_ATTEMPTS = 6
RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S = 1.0, 8.0


def is_transient(e: BaseException) -> bool:
    """A refusal worth retrying: the server says to try again, or is briefly unavailable (a
    fresh head's job agent: "No available agent to submit job, please try again later"; a
    proxy in front of a restarting head: 502, 503, 504)."""
    text = str(e).lower()
    return any(k in text for k in ("try again later", "no available agent", "temporarily unavailable",
                                   "status code 502", "status code 503", "status code 504"))


def retrying(call: Callable[[], T], what: str, attempts: int | None = None, deadline: float | None = None) -> T:
    """``call()`` (one request of the job client), retrying a transient refusal (`is_transient`)
    with backoff (1, 2, 4, 8, 8 s). A permanent refusal, or a transient one that outlasts the
    attempts or would be retried past ``deadline`` (a ``time.monotonic()`` value: a
    ``--timeout``), raises one line: ``<what>: <the server's first line>``."""
    attempts = attempts or RETRY_ATTEMPTS
    delay, waited = RETRY_FIRST_DELAY_S, 0.0
    for attempt in range(attempts):
        try:
            return call()
        except (RuntimeError, ValueError, OSError) as e:  # the SDK raises RuntimeError; requests OSErrors
            if not is_transient(e):
                raise ClaimsSearchError(f"{what}: {one_line(e)}") from None
            if attempt == attempts - 1 or (deadline is not None and time.monotonic() + delay > deadline):
                raise ClaimsSearchError(f"{what}: still refused after {attempt + 1} attempts over {waited:g} s: "
                                        f"{one_line(e)}") from None
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
    raise AssertionError("unreachable")


def log_tail(client, job_id: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a job's log ('' if there is none yet)."""
    with contextlib.suppress(Exception):
        return "\n".join(client.get_job_logs(job_id).rstrip().splitlines()[-lines:])
    return ""


def _failure(client, job_id: str, status: str) -> ClaimsSearchError:
    info = retrying(lambda: client.get_job_info(job_id), f"job {job_id}")
    lines = (info.message or "").strip().splitlines() or ["no message"]
    tail = log_tail(client, job_id)
    # One line first (Ray's summary, e.g. "runtime_env setup failed: ..."), then what explains
    # it: the job's own log, or, when the job never started (runtime env), the message's end,
    # whose last line is the underlying exception.
    text = f"job {job_id} {status.lower()}: {lines[0]}"
    if info.error_type:
        text += f" [{info.error_type}]"
    if tail:
        text += "\n--- last lines of the job's log ---\n" + tail
    elif len(lines) > 1:
        text += "\n--- end of the job's error ---\n" + "\n".join(lines[-6:])
    return ClaimsSearchError(text)


def follow_logs(client, job_id: str, out: TextIO = sys.stdout) -> None:
    """Print a job's log as it is written, until the job ends."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(_tail())


def wait(
    client,
    job_id: str,
    *,
    follow: bool = False,
    timeout: float | None = None,
    poll_s: float = 1.0,
    out: TextIO = sys.stdout,
) -> str:
    """Wait for the job to end; return ``SUCCEEDED`` or raise with the log tail.

    ``follow`` streams the log meanwhile. ``timeout`` (seconds) raises without stopping the job,
    a head that refuses the status requests included: it is not retried past the timeout.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if follow:
        with contextlib.suppress(RuntimeError):  # a dropped websocket: fall back to polling
            follow_logs(client, job_id, out)
    while True:
        status = job_status(client, job_id, deadline)
        if status in TERMINAL:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise ClaimsSearchError(
                f"job {job_id} still {status.lower()} after {timeout:g} s (it keeps running; "
                f"`claims-search stop {job_id}` stops it)"
            )
        time.sleep(poll_s)
    if status != "SUCCEEDED":
        raise _failure(client, job_id, status)
    return status


def job_status(client, job_id: str, deadline: float | None = None) -> str:
    """A job's status (``RUNNING``, ``SUCCEEDED`` ...), a transient refusal retried (not past
    ``deadline``, a ``time.monotonic()`` value)."""
    return str(retrying(lambda: client.get_job_status(job_id), f"job {job_id}", deadline=deadline).value)


def list_jobs(client) -> list:
    """All jobs the cluster knows, newest first (``JobDetails``)."""
    return sorted(retrying(client.list_jobs, "jobs: cannot list the cluster's jobs"),
                  key=lambda j: j.start_time or 0, reverse=True)


def stop(client, job_id: str) -> bool:
    """Ask the cluster to stop a job; True if it was running."""
    return bool(retrying(lambda: client.stop_job(job_id), f"job {job_id}"))


def logs(client, job_id: str) -> str:
    """A job's whole log so far."""
    return retrying(lambda: client.get_job_logs(job_id), f"job {job_id}")
