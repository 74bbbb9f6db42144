"""Every file under cluster/ parses and says what the tools expect: the launcher YAML against
Ray's own schema, a head with no trial CPUs, GPU workers, an MLflow server on shared artifact
storage, a KubeRay RayJob that runs a claims-search command, one Ray version everywhere, and a
comment on every key. (search_spaces/*.yaml are checked in tests/test_space.py.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER = CLUSTER / "launcher.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
KEY = re.compile(r"^(\s*)(?:- )?([A-Za-z_][\w.-]*):(?:\s|$)")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def kinds(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}


def uncommented_keys(path: Path, max_indent: int) -> list[str]:
    """Block-style keys indented at most ``max_indent`` with no comment on the line above
    (or at the end of their own line)."""
    missing, previous = [], ""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = KEY.match(line)
        if m and len(m.group(1)) <= max_indent and not previous.lstrip().startswith("#") and " #" not in line:
            missing.append(f"{path.name}:{n}: {m.group(2)}")
        previous = line
    return missing


def shell_args(commands: list[str], *program: str) -> list[str]:
    """The words of the first ``program`` invocation (e.g. ``"ray", "start"``) in shell lines."""
    n = len(program)
    for command in commands:
        words = shlex.split(command.replace(";", " ; "))
        for i in range(len(words) - n + 1):
            if tuple(words[i:i + n]) == program:
                return words[i:]
    raise AssertionError(f"no {' '.join(program)!r} command in {commands}")


def flag(words: list[str], name: str) -> str | None:
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_cluster_yaml_parses_and_comments_its_keys(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)
    # The launcher's node types nest their keys two levels down; Kubernetes objects one.
    assert uncommented_keys(path, max_indent=8 if path == LAUNCHER else 2) == []


def test_the_launcher_config_is_valid_for_ray():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load(LAUNCHER), schema)


def test_the_launcher_head_runs_no_trials_and_workers_have_gpus():
    cfg = load(LAUNCHER)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"].get("GPU", 0) == 0
    assert flag(shell_args(cfg["head_start_ray_commands"], "ray", "start"), "--num-cpus") == "0"
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert workers
    for name, t in workers.items():
        assert t["resources"]["GPU"] >= 1, name
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    assert any("claims-search" in c and "pip install" in c for c in cfg["setup_commands"])


def test_the_launcher_head_serves_mlflow_on_shared_artifact_storage():
    commands = load(LAUNCHER)["head_start_ray_commands"]
    mlflow = shell_args(commands, "mlflow", "server")
    assert flag(mlflow, "--backend-store-uri").startswith(("sqlite:///", "postgresql://"))
    assert flag(mlflow, "--default-artifact-root").startswith(("s3://", "gs://"))
    assert "127.0.0.1:*" in flag(mlflow, "--allowed-hosts").split(",")
    assert any("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in c for c in commands)


def test_the_raycluster_head_runs_no_trials_and_workers_have_gpus():
    cluster = kinds(RAYCLUSTER)["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["maxReplicas"], g["groupName"]
        (container,) = g["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, g["groupName"]


def test_the_raycluster_mlflow_sidecar_is_reachable_by_its_service_name():
    objects = kinds(RAYCLUSTER)
    service = objects["Service"]
    assert service["spec"]["type"] == "ClusterIP"  # never public: port-forward to it
    containers = {c["name"]: c for c in objects["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"]}
    mlflow = containers["mlflow"]["command"]
    assert mlflow[:2] == ["mlflow", "server"]
    allowed = flag(mlflow, "--allowed-hosts").split(",")
    assert f"{service['metadata']['name']}:5000" in allowed and "localhost:*" in allowed
    assert flag(mlflow, "--default-artifact-root").startswith(("s3://", "gs://"))
    assert {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"} in containers["mlflow"]["env"]


def test_the_rayjob_runs_a_claims_search_command_on_the_raycluster():
    job = kinds(RAYJOB)["RayJob"]
    cluster = kinds(RAYCLUSTER)["RayCluster"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "claims-search" and argv[1] == "search"
    assert flag(argv, "--data").startswith(("s3://", "gs://"))  # shared storage, not a node's disk
    assert flag(argv, "--storage").startswith(("s3://", "gs://"))
    service = kinds(RAYCLUSTER)["Service"]["metadata"]["name"]
    assert flag(argv, "--tracking-uri") == f"http://{service}:5000"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["CLAIMS_SEARCH_STORAGE_PATH"].startswith(("s3://", "gs://"))
    if (Path(__file__).resolve().parents[1] / "claims_search" / "commands" / "search.py").exists():
        from claims_search.cli import build_parser

        build_parser(argv[1:]).parse_args(argv[1:])  # the flags exist (SystemExit if not)


def test_one_ray_version_everywhere():
    import ray

    from_line = next(l for l in DOCKERFILE.read_text().splitlines() if l.startswith("FROM "))
    image = from_line.split()[1]
    assert image.startswith("rayproject/ray:")
    version = image.split(":")[1].split("-")[0]
    assert version == ray.__version__  # the laptop's Ray talks to the cluster's job server
    assert load(LAUNCHER)["docker"]["image"].startswith(f"rayproject/ray:{version}-")
    assert kinds(RAYCLUSTER)["RayCluster"]["spec"]["rayVersion"] == version


def test_the_readme_covers_every_cluster_file():
    readme = (CLUSTER / "README.md").read_text()
    for path in [LAUNCHER, RAYCLUSTER, RAYJOB, DOCKERFILE]:
        assert str(path.relative_to(CLUSTER.parent)) in readme, path.name
    for must in ("port-forward", "claims-search submit", "s3://", "--allowed-hosts"):
        assert must in readme, must
