"""Pytest fixtures for a real multi-node Ray cluster, a real MLflow server and headless Chromium.

Register with ``pytest_plugins = ["tests.cluster_harness"]`` (root conftest) or import the
fixtures into a test module. Everything is session-scoped and started on first use:

- ``ray_cluster``: ``ray start --head --num-cpus=0`` (runs no trials) plus ``WORKERS`` worker
  nodes with one CPU and the custom resource ``worker_node`` each, started one after the other.
  Every node has its own short ``--temp-dir`` and its own ports, and token auth is on with a
  token of this cluster only, so other Ray instances on the machine are untouched. Teardown stops
  only the processes this harness started (never ``ray stop``: it kills every Ray on the host).
- ``mlflow_server``: ``mlflow server`` on a SQLite file and a local artifact folder, with
  ``--allowed-hosts`` and job execution off; ready when ``/health`` answers.
- ``chromium``: a Playwright browser context driving Debian's ``/usr/bin/chromium`` (no browser
  download) with a fresh user data dir. ``make browser`` installs Chromium.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's ray / mlflow scripts sit beside its python
WORKERS = 2  # worker nodes; the head runs no trials
ARTIFACTS = REPO / "test-artifacts"  # screenshots and logs kept after a run (git-ignored)
CHROMIUM_FLAGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, headers: dict | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (our own temp dir: unique to us)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if any(marker in part for part in p.info["cmdline"] or ()):
                pids.append(p.info["pid"])
    return [pid for pid in pids if pid != os.getpid()]


def stop_processes(pgids: list[int], marker: str, grace: float = 5.0) -> None:
    """SIGTERM our process groups and every process naming ``marker``; SIGKILL what is left."""
    import psutil

    targets = set(_pids_using(marker))
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    procs = []
    for pid in targets:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


@dataclasses.dataclass
class RayCluster:
    """A running multi-node Ray cluster on this machine."""

    gcs_address: str  # "127.0.0.1:<port>", for ray.init / ray start --address
    dashboard_url: str  # "http://127.0.0.1:<port>", for the Job Submission API
    env: dict[str, str]  # the environment every client of this cluster needs (auth token)
    temp_dirs: list[Path]  # one per node: head first
    workers: int

    def client_env(self) -> dict[str, str]:
        """``os.environ`` plus this cluster's auth settings, for subprocesses."""
        return {**os.environ, **self.env}


def _ray_start(args: list[str], env: dict[str, str], temp_dir: Path) -> int:
    """Run one ``ray start`` in its own process group; return that group's id."""
    log = temp_dir.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", *args, f"--temp-dir={temp_dir}", "--disable-usage-stats",
             "--node-ip-address=127.0.0.1", "--object-store-memory=100000000",
             f"--dashboard-agent-listen-port={free_port()}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0:
        raise RuntimeError(f"ray start {args[0]} failed ({rc}): {log.read_text()[-2000:]}")
    return proc.pid


@contextlib.contextmanager
def start_ray_cluster(workers: int = WORKERS) -> Iterator[RayCluster]:
    """Start a head (no CPUs) and ``workers`` one-CPU worker nodes; stop exactly them after."""
    # Short paths: Ray's unix sockets live under the temp dir and must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="csr", dir="/tmp"))
    # A token of our own: other engineers' clusters keep theirs (~/.ray/auth_token is shared).
    env_auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    env = {**os.environ, **env_auth, "RAY_USAGE_STATS_ENABLED": "0"}
    # As in an activated venv (or a cluster image): a job's `python` is the one with Ray.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    pgids: list[int] = []
    temp_dirs: list[Path] = []
    try:
        head_dir = root / "h"
        temp_dirs.append(head_dir)
        pgids.append(_ray_start(
            ["--head", f"--port={gcs_port}", "--num-cpus=0", "--num-gpus=0",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dash_port}", f"--ray-client-server-port={free_port()}"],
            env, head_dir,
        ))
        # One after the other: parallel joins race on the head's registration (STACK.md).
        for i in range(workers):
            node_dir = root / f"w{i}"
            temp_dirs.append(node_dir)
            pgids.append(_ray_start(
                [f"--address=127.0.0.1:{gcs_port}", "--num-cpus=1", "--num-gpus=0",
                 '--resources={"worker_node": 1}'],
                env, node_dir,
            ))
        dashboard = f"http://127.0.0.1:{dash_port}"
        auth = {"Authorization": f"Bearer {env_auth['RAY_AUTH_TOKEN']}"}
        wait_http(f"{dashboard}/api/version", timeout=60, headers=auth)
        yield RayCluster(f"127.0.0.1:{gcs_port}", dashboard, env_auth, temp_dirs, workers)
    finally:
        _keep_logs(root, "ray-cluster")
        stop_processes(pgids, str(root))
        shutil.rmtree(root, ignore_errors=True)


def _keep_logs(root: Path, name: str) -> None:
    """Copy the nodes' start logs to test-artifacts/ so a CI failure can be read afterwards."""
    dest = ARTIFACTS / name
    dest.mkdir(parents=True, exist_ok=True)
    for log in root.glob("*.log"):
        with contextlib.suppress(OSError):
            shutil.copy(log, dest / log.name)


@dataclasses.dataclass
class MlflowServer:
    """A running ``mlflow server``."""

    url: str  # "http://127.0.0.1:<port>"
    port: int
    root: Path  # holds mlflow.db and artifacts/


@contextlib.contextmanager
def start_mlflow_server() -> Iterator[MlflowServer]:
    """Start ``mlflow server`` (SQLite, local artifacts, allowed hosts set); stop it after."""
    root = Path(tempfile.mkdtemp(prefix="csmlflow"))
    port = free_port()
    # Two processes instead of ten: no job-execution workers (STACK.md).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"),
         # Host headers carry the port; MLflow compares them with fnmatch patterns.
         "--allowed-hosts", "127.0.0.1:*,localhost:*"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health", timeout=90, proc=proc)
        except (RuntimeError, TimeoutError) as e:
            log.flush()
            raise RuntimeError(f"{e}\n{(root / 'server.log').read_text()[-2000:]}") from None
        yield MlflowServer(url, port, root)
    finally:
        stop_processes([proc.pid], str(root))
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def chromium_path() -> str:
    """Debian's Chromium, or a clear failure saying how to install it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: run `make browser` (apt-get install chromium)")
    return path


@contextlib.contextmanager
def start_chromium():
    """A headless Chromium browser context on a fresh user data dir (Playwright, no download)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="cschromium")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A real multi-node Ray cluster: a head with no trial CPUs and WORKERS worker nodes."""
    with start_ray_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """A real MLflow tracking server on SQLite with a local artifact folder."""
    with start_mlflow_server() as server:
        yield server


@pytest.fixture(scope="session")
def chromium():
    """A Playwright ``BrowserContext`` of headless Debian Chromium."""
    with start_chromium() as context:
        yield context


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test-artifacts/`` at the repository root (git-ignored): screenshots, kept logs."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
