"""A search on an autoscaling cluster that starts with no training node, as the shipped
`cluster/launcher.yaml` and KubeRay configs do: Ray's own fake multi-node autoscaler adds nodes
of the training node type while trials wait for them.

The cluster lives in its own PID, network and mount namespaces (``unshare -p -f -n -m``: its
ports, its /tmp/ray and its `ray stop` touch nothing else on the machine). Its training node
type carries a custom resource, ``trainer``, in place of GPUs. The search goes through
`claims-search submit`, as users send it, and then once more directly on the head.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Absolute, and the job uses the installed claims-search (--no-upload): the fake provider's
# nodes share the head's /tmp/ray, where a new node re-extracts an uploaded working dir under
# the running driver (../shared/STACK.md); real nodes have their own disks.
SPACE = REPO / "tests" / "spaces" / "autoscaling.yaml"

# Ray's fake multi-node provider, as its example.yaml (not in the pip wheel) lays it out: a head
# with one CPU (the job's driver and the trials' drivers) and up to two training nodes, none at
# the start.
CONFIG = {
    "cluster_name": "autoscaling-test", "max_workers": 2,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
        "trainer": {"resources": {"CPU": 1, "trainer": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    },
    "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 10,
    "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [],
}

NODES = ("import json, ray; ray.init(address='auto', log_to_driver=False); "
         "print('NODES', json.dumps([[n['Alive'], 'trainer' in n['Resources']] for n in ray.nodes()]))")

SCRIPT = """
set -u
ip link set lo up
mkdir -p /tmp/ray && mount -t tmpfs tmpfs /tmp/ray
ray start --head --num-cpus=1 --autoscaling-config="$CONFIG" --include-dashboard=true \\
    --dashboard-host=127.0.0.1 --dashboard-port=8265 --disable-usage-stats > "$WORK/head.log" 2>&1 || exit 90
python -c "$NODES"
claims-search submit --address http://127.0.0.1:8265 --follow --tracking-uri "sqlite:///$WORK/mlflow.db" \\
    --no-upload --env CLAIMS_SEARCH_SHARED_FS=1 --storage-path "$WORK/runs" \\
    -- search --space {space} --data "$DATA" --name submitted --no-progress
echo "SUBMIT_RC $?"
python -c "$NODES"
claims-search search --space {space} --data "$DATA" --address auto --name direct --no-progress \\
    --tracking-uri "sqlite:///$WORK/mlflow.db" --storage "$WORK/runs"
echo "DIRECT_RC $?"
ray stop --force > /dev/null 2>&1
"""


def _nodes(out: str) -> list[list[list[bool]]]:
    return [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("NODES ")]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for unshare")
def test_a_search_starts_on_an_autoscaling_cluster_with_no_training_node(prepared, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_FAKE_CLUSTER": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": uuid.uuid4().hex, "CONFIG": str(config), "WORK": str(tmp_path),
           "DATA": str(prepared), "NODES": NODES, "PYTHONUNBUFFERED": "1",
           "CLAIMS_SEARCH_SHARED_FS": "1"}  # the fake nodes share this machine's disk
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(["unshare", "-p", "-f", "-n", "-m", "--mount-proc", "bash", "-c", SCRIPT.format(space=SPACE)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    logs = REPO / "test-artifacts" / "autoscaling"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "run.log").write_text(out)
    assert r.returncode == 0 and "SUBMIT_RC 0" in out, out[-4000:]
    before, after = _nodes(out)
    assert before == [[True, False]]  # the head alone: no training node at the start
    assert sum(trainer for _, trainer in after) >= 1  # the autoscaler added training nodes
    assert "the cluster autoscales (ray.head.default (CPU 1; at most 1); trainer (CPU 1, trainer 1; at most 2))" in out
    assert "waiting for 1 node(s) of trainer" in out  # what pending trials wait for, on the live line
    assert "2 trial(s) complete, 0 failed, 0 pruned" in out
    assert "DIRECT_RC 0" in out and out.count("2 trial(s) complete, 0 failed, 0 pruned") == 2
