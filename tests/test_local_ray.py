"""A local search is local: without --address it starts its own Ray instance, even when a
cluster started with `ray start` is the last one this machine knows of.

A bare ``ray.init()`` reads ``$RAY_TMPDIR/ray/ray_current_cluster`` (written by ``ray start``)
and joins that cluster. Here a one-node cluster is started so that it writes that file in the
test's own private temp dir, and the search runs with the same temp dir and token: had it
joined, it would share that cluster's session and die when the cluster is stopped mid-search.
"""

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster_harness import _ray_start, free_port, stop_processes
from tests.test_search import RESUMABLE, RaySandbox, search_cmd

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _sessions(ray_dir: Path) -> set[str]:
    return {p.name for p in ray_dir.glob("session_2*")}


def test_a_local_search_never_joins_the_cluster_started_on_the_machine(prepared, tmp_path):
    box = RaySandbox()
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    box.env.update(token)
    box.env.pop("RAY_ADDRESS", None)
    ray_dir = Path(box.root) / "ray"
    pgid = None
    try:
        pgid = _ray_start(["--head", f"--port={free_port()}", "--num-cpus=1", "--include-dashboard=false"],
                          {**box.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}, ray_dir)
        # What a bare ray.init() would join: the cluster just started.
        assert (ray_dir / "ray_current_cluster").is_file()
        (other,) = _sessions(ray_dir)

        proc = box.start(search_cmd(prepared, tmp_path, "stays-local", RESUMABLE), tmp_path / "search.log")
        deadline = time.monotonic() + 300
        # The search's own session appears beside the other cluster's, then its first trial starts.
        while not ((_sessions(ray_dir) - {other}) and list((tmp_path / "runs").rglob("params.json"))):
            assert proc.poll() is None, (tmp_path / "search.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the search's first trial never started"
            time.sleep(1)
        stop_processes([pgid], other)  # the other cluster goes away mid-search
        pgid = None
        rc = proc.wait(timeout=900)
        out = (tmp_path / "search.log").read_text()
    finally:
        if pgid is not None:
            stop_processes([pgid], str(ray_dir))
        box.close()
    assert rc == 0, out[-3000:]
    assert "went away" not in out
    assert "3 trial(s) complete, 0 failed" in out, out[-2000:]
