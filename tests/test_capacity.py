"""A search space against what a cluster can provide: the node types of its autoscaler."""

import copy
from pathlib import Path

import pytest
import yaml

from claims_search.cluster import capacity
from claims_search.cluster.capacity import NodeType
from claims_search.errors import ClaimsSearchError
from claims_search.search.space import load_space, parse_space, validate_against_cluster

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = capacity.load_launcher_config(ROOT / "cluster" / "launcher.yaml")


def test_the_shipped_launcher_config_lists_its_node_types_and_counts():
    assert [(t.name, t.resources.get("GPU", 0), t.max_count) for t in LAUNCHER] == [
        ("head_cpu", 0, 1), ("gpu_1x_a10g", 1, 4), ("gpu_4x_a10g", 4, 2)]


@pytest.mark.parametrize("name", ["default", "paper"])
def test_the_shipped_gpu_spaces_fit_the_shipped_cluster_that_starts_with_no_gpu_node(name):
    space = load_space(name)
    # Up now: the head alone (no CPUs, no GPUs). The nodes-now check refuses; the node types don't.
    with pytest.raises(ClaimsSearchError, match="the cluster has 0"):
        validate_against_cluster(space, {"CPU": 0.0, "GPU": 0.0})
    assert capacity.check_space(space, LAUNCHER) == min(space.budget.concurrency, space.budget.trials)


def with_budget(**budget):
    data = yaml.safe_load(open(ROOT / "search_spaces" / "smoke.yaml"))
    data = copy.deepcopy(data)
    data["budget"].update(budget)
    return parse_space(data, ROOT / "search_spaces" / "smoke.yaml")


def test_a_trial_that_can_never_fit_is_refused_naming_what_it_needs():
    with pytest.raises(ClaimsSearchError) as e:
        capacity.check_space(with_budget(gpus_per_worker=8, cpus_per_worker=4), LAUNCHER)
    msg = str(e.value)
    assert "a trial's worker needs CPU 4, GPU 8 on one node" in msg
    assert "gpu_4x_a10g (CPU 48, GPU 4; at most 2)" in msg and "add a node type with at least CPU 4, GPU 8" in msg


def test_workers_spread_over_nodes_but_not_beyond_the_maximum_counts():
    # 4 workers of one GPU: 12 one-GPU slots in all (4 nodes x 1 + 2 nodes x 4): 3 trials at once.
    space = with_budget(workers_per_trial=4, gpus_per_worker=1, cpus_per_worker=4, concurrency=8, trials=8)
    assert capacity.check_space(space, LAUNCHER) == 3
    with pytest.raises(ClaimsSearchError, match="a trial needs 13 workers of CPU 4, GPU 1 at once"):
        capacity.check_space(with_budget(workers_per_trial=13, gpus_per_worker=1, cpus_per_worker=4), LAUNCHER)


def test_custom_resources_count_like_gpus():
    fake = [NodeType("head", {"CPU": 1}, 1), NodeType("trainer", {"CPU": 1, "trainer": 1}, 2)]
    space = with_budget(worker_resources={"trainer": 1}, concurrency=2)
    assert capacity.check_space(space, fake) == 2
    assert capacity.waiting_for(space, fake, 2) == "waiting for 2 node(s) of trainer"
    assert capacity.waiting_for(space, fake, 0) is None
    gpu = with_budget(gpus_per_worker=1, cpus_per_worker=4)
    assert capacity.waiting_for(gpu, LAUNCHER, 3) == "waiting for 3 GPU node(s) of gpu_1x_a10g"


def test_a_cluster_config_that_is_not_one_is_one_line(tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("provider: {type: aws}\n")
    with pytest.raises(ClaimsSearchError, match=r"cluster.yaml: no available_node_types$"):
        capacity.load_launcher_config(bad)
    with pytest.raises(ClaimsSearchError, match="cannot read the cluster config"):
        capacity.load_launcher_config(tmp_path / "missing.yaml")


def test_a_local_instance_s_read_only_autoscaler_is_not_an_autoscaling_cluster():
    import json

    from claims_search.cluster.autoscaler import scales

    def status(mapping):
        return json.dumps({"monitor_pid": 1, "autoscaler_report": {"node_type_mapping": mapping}}).encode()

    # ray.init() and `ray start` nodes: a read-only autoscaler whose node types are the nodes.
    assert not scales(status({"fc2093": "node_fc209300f6be48069952b8145dfca1b0c8bc19e6c975c1457f3bd459"}))
    assert not scales(None) and not scales(b"not json")
    # An autoscaler with node types of its own (ray up, KubeRay, the fake multi-node provider).
    assert scales(status({"127.0.0.1": "ray.head.default", "127.0.0.2": "trainer"}))
