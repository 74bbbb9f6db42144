"""Pytest fixtures for a real multi-node Ray cluster, a real MLflow server and headless Chromium.

Register with ``pytest_plugins = ["tests.cluster_harness"]`` (root conftest) or import the
fixtures into a test module. Everything is session-scoped and started on first use:

- ``ray_cluster``: ``ray start --head --num-cpus=0`` (runs no trials) plus two worker nodes
  that share no disk, as on a real cluster: each runs in its own mount namespace (``unshare -m``)
  with a private tmpfs over ``/tmp`` and ``~/.cache``, so no node reads another's local files;
  the checkout and the venv stay visible (bind-mounted back when they live under ``/tmp``).
  Node 1 (``worker_node``, ``trial_driver``) takes trial drivers, node 2 (``worker_node``,
  ``train_worker``) Ray Train workers. Every node has its own short ``--temp-dir`` and ports,
  and token auth is on with a token of this cluster only, so other Ray instances on the machine
  are untouched. Teardown stops only the processes this harness started (never ``ray stop``).
- ``s3_server``: moto's S3-compatible server on 127.0.0.1 with one bucket: the only storage the
  nodes share (``CLAIMS_SEARCH_S3_ENDPOINT`` points claims-search at it).
- ``mlflow_server``: ``mlflow server`` on a SQLite file, artifacts proxied to the S3 server
  (``--artifacts-destination``), with ``--allowed-hosts`` and job execution off; ready when
  ``/health`` answers.
- ``chromium``: a Playwright browser context driving Debian's ``/usr/bin/chromium`` (no browser
  download) with a fresh user data dir. ``make browser`` installs Chromium.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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

    def add_node(self, cpus: int, resources: dict[str, float]) -> Path:
        """Join one more worker node (private filesystem, as the others); its temp dir. It is
        stopped with the cluster (its processes name the cluster's folder)."""
        node_dir = self.temp_dirs[0].parent / f"w{len(self.temp_dirs) - 1}"
        env = {**self.client_env(), "RAY_USAGE_STATS_ENABLED": "0"}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("RAY_ADDRESS", None)
        _ray_start([f"--address={self.gcs_address}", f"--num-cpus={cpus}", "--num-gpus=0",
                    f"--resources={json.dumps(resources)}"], env, node_dir, private=True)
        self.temp_dirs.append(node_dir)
        self.workers += 1
        return node_dir

    def node_processes(self, index: int) -> list[int]:
        """Every process of worker node ``index`` (1 = the first worker node): its raylet and
        whatever shares the raylet's mount namespace (agents, Ray workers, their children)."""
        import psutil

        named = set(_pids_using(str(self.temp_dirs[index])))
        mine = os.readlink("/proc/self/ns/mnt")
        namespaces = set()
        for pid in named:
            with contextlib.suppress(OSError):
                namespaces.add(os.readlink(f"/proc/{pid}/ns/mnt"))
        namespaces.discard(mine)  # a node started without its own namespace: its named processes only
        out = set(named)
        for pid in psutil.pids():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/mnt") in namespaces:
                    out.add(pid)
        return sorted(out)

    def node_id(self, index: int) -> str:
        """The Ray node id of node ``index`` (0 = the head), read from its raylet's command line."""
        import psutil

        for pid in _pids_using(str(self.temp_dirs[index])):
            with contextlib.suppress(psutil.Error):
                for arg in psutil.Process(pid).cmdline():
                    if arg.startswith("--node_id="):
                        return arg.split("=", 1)[1]
        raise LookupError(f"no raylet found for node {index} ({self.temp_dirs[index]})")

    def runs_train_worker(self, index: int) -> bool:
        """Whether a Ray Train worker process runs on node ``index`` now."""
        import psutil

        for pid in self.node_processes(index):
            with contextlib.suppress(psutil.Error):
                if " ".join(psutil.Process(pid).cmdline()).startswith("ray::RayTrainWorker"):
                    return True
        return False

    def lose_node(self, index: int) -> list[int]:
        """SIGKILL every process of worker node ``index`` at once, as when its VM or pod is gone;
        the pids killed."""
        pids = self.node_processes(index)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return pids


# Inside a node's own mount namespace: private tmpfs over /tmp and ~/.cache, then the folders
# the node must still run from (the checkout, the venv) bound back where they were.
PRIVATE_NODE = r"""
set -e
keep="$1"; shift
i=0
for dir in $KEEP_DIRS; do mkdir -p "$keep/$i"; mount --bind "$dir" "$keep/$i"; i=$((i+1)); done
mount -t tmpfs tmpfs /tmp
mkdir -p "$HOME/.cache" && mount -t tmpfs tmpfs "$HOME/.cache"
i=0
for dir in $KEEP_DIRS; do
  if [ ! -d "$dir" ]; then mkdir -p "$dir" && mount --bind "$keep/$i" "$dir"; fi
  i=$((i+1))
done
mkdir -p "$NODE_TEMP_DIR"
exec "$@"
"""


def _keep_dirs() -> list[str]:
    """The checkout and the venv: what a private node must still see at the same paths."""
    dirs = sorted({str(REPO), str(Path(sys.prefix).resolve())})
    return [d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs)]


def _ray_start(args: list[str], env: dict[str, str], temp_dir: Path, private: bool = False) -> int:
    """Run one ``ray start`` in its own process group (and, if ``private``, its own mount
    namespace with private /tmp and ~/.cache); return that group's id."""
    log = temp_dir.with_suffix(".log")
    cmd = [str(BIN / "ray"), "start", *args, f"--temp-dir={temp_dir}", "--disable-usage-stats",
           "--node-ip-address=127.0.0.1", "--object-store-memory=100000000",
           f"--dashboard-agent-listen-port={free_port()}"]
    if private:
        # A mount point outside /tmp, named after the node's temp dir so teardown finds it.
        keep = tempfile.mkdtemp(prefix=f"cskeep-{temp_dir.parent.name}-", dir="/var/tmp")
        env = {**env, "KEEP_DIRS": " ".join(_keep_dirs()), "NODE_TEMP_DIR": str(temp_dir)}
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_NODE, "node", keep, *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0:
        raise RuntimeError(f"ray start {args[0]} failed ({rc}): {log.read_text()[-2000:]}")
    return proc.pid


# Worker nodes: (CPUs, custom resources). Trial drivers fit only on node 1, Train workers only
# on node 2, so every trial's driver and its ranks are on nodes that share no disk.
NODES = [(1, {"worker_node": 1, "trial_driver": 4}), (2, {"worker_node": 1, "train_worker": 2})]


@contextlib.contextmanager
def start_ray_cluster(nodes=tuple(NODES), private: bool = True) -> Iterator[RayCluster]:
    """Start a head (no CPUs) and one worker node per ``(cpus, resources)`` in ``nodes``, each
    in its own mount namespace when ``private``; stop exactly them after."""
    workers = len(nodes)
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
        for i, (cpus, resources) in enumerate(nodes):
            node_dir = root / f"w{i}"
            temp_dirs.append(node_dir)
            pgids.append(_ray_start(
                [f"--address=127.0.0.1:{gcs_port}", f"--num-cpus={cpus}", "--num-gpus=0",
                 f"--resources={json.dumps(resources)}"],
                env, node_dir, private=private,
            ))
        dashboard = f"http://127.0.0.1:{dash_port}"
        auth = {"Authorization": f"Bearer {env_auth['RAY_AUTH_TOKEN']}"}
        wait_http(f"{dashboard}/api/version", timeout=60, headers=auth)
        yield RayCluster(f"127.0.0.1:{gcs_port}", dashboard, env_auth, temp_dirs, workers)
    finally:
        _keep_logs(root, "ray-cluster")
        stop_processes(pgids, str(root))
        shutil.rmtree(root, ignore_errors=True)
        for keep in Path("/var/tmp").glob(f"cskeep-{root.name}-*"):
            # Empty here (the binds were private to the nodes): remove folders, never contents.
            for d in [*keep.iterdir(), keep]:
                with contextlib.suppress(OSError):
                    d.rmdir()


def _keep_logs(root: Path, name: str) -> None:
    """Copy the nodes' start logs to test-artifacts/ so a CI failure can be read afterwards."""
    dest = ARTIFACTS / name
    dest.mkdir(parents=True, exist_ok=True)
    for log in root.glob("*.log"):
        with contextlib.suppress(OSError):
            shutil.copy(log, dest / log.name)


@dataclasses.dataclass
class MlflowServer:
    """A running ``mlflow server``. ``stop()`` kills its process group (an outage, as when its
    pod dies); ``start()`` brings it back on the same port and the same backend store."""

    url: str  # "http://127.0.0.1:<port>"
    port: int
    root: Path  # holds mlflow.db and artifacts/
    s3: "S3Server | None" = None
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> float:
        """Start the server and wait until ``/health`` answers; the seconds that took."""
        started = time.monotonic()
        # Two processes instead of ten: no job-execution workers (STACK.md).
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        artifacts = str(self.root / "artifacts")
        if self.s3 is not None:
            env.update(self.s3.env, MLFLOW_S3_ENDPOINT_URL=self.s3.endpoint)
            artifacts = self.s3.uri("mlflow")
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", artifacts,  # served through the server: clients need no S3 access
                 # Host headers carry the port; MLflow compares them with fnmatch patterns.
                 "--allowed-hosts", "127.0.0.1:*,localhost:*"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_http(f"{self.url}/health", timeout=timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}\n{(self.root / 'server.log').read_text()[-2000:]}") from None
        return time.monotonic() - started

    def stop(self) -> None:
        """SIGKILL the server's whole process group (no clean shutdown) and wait for it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        stop_processes([], str(self.root), grace=1.0)  # a worker that left the group
        self.proc = None


@dataclasses.dataclass
class S3Server:
    """A running S3-compatible server (moto) with one bucket."""

    endpoint: str  # "http://127.0.0.1:<port>"
    bucket: str
    env: dict[str, str]  # what a client needs: endpoint and (dummy) credentials

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@contextlib.contextmanager
def start_s3_server(bucket: str = "claims") -> Iterator[S3Server]:
    """moto's server mode on 127.0.0.1 with ``bucket`` created; stop it after."""
    import boto3

    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="css3"))
    log = open(root / "moto.log", "wb")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    try:
        wait_http(f"{endpoint}/", timeout=60, proc=proc)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield S3Server(endpoint, bucket, {"CLAIMS_SEARCH_S3_ENDPOINT": endpoint, **creds})
    finally:
        stop_processes([proc.pid], str(root))
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def start_mlflow_server(s3: S3Server | None = None) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` (SQLite; artifacts proxied to ``s3`` or a local folder; allowed
    hosts set); stop it after."""
    root = Path(tempfile.mkdtemp(prefix="csmlflow"))
    port = free_port()
    server = MlflowServer(f"http://127.0.0.1:{port}", port, root, s3)
    try:
        server.start()
        yield server
    finally:
        pgids = [server.proc.pid] if server.proc is not None else []
        stop_processes(pgids, str(root))
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
    """A real multi-node Ray cluster whose nodes share no disk: a head with no trial CPUs, a
    node for trial drivers and a node for Ray Train workers."""
    with start_ray_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (moto) on 127.0.0.1 with the bucket ``claims``."""
    with start_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(s3_server) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on SQLite, its artifacts on the S3 server."""
    with start_mlflow_server(s3_server) as server:
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
