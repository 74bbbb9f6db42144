"""Every file under cluster/ parses and says what the tools expect, so the configs work on
first use: the launcher YAML against Ray's own schema and the KubeRay manifests against the
CRDs of the oldest KubeRay they support, a head with no trial CPUs that may start GPU workers,
Ray token auth, node-local disk the pods request, an MLflow server that stores artifacts itself
and is not open to the network, a RayJob that runs a claims-search command, one Ray version
everywhere, and a comment on every key. (search_spaces/*.yaml are checked in tests/test_space.py.)"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "launcher.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
README = CLUSTER / "README.md"
AWS = CLUSTER / "aws"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERAY = "1.5.1"  # the oldest KubeRay with spec.authOptions; its CRDs are in tests/schemas/
KEY = re.compile(r"^(\s*)(?:- )?([A-Za-z_][\w.-]*):(?:\s|$)")
HOME = "/home/ray"  # rayproject/ray images (and cluster/Dockerfile) run as the user `ray`
NODE_DISK = {f"{HOME}/.cache/claims-search": "node-local data cache", "/tmp": "scratch"}


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


def raycluster_pods() -> dict[str, dict]:
    """The pod spec of the head and of each worker group, by group name."""
    spec = kinds(RAYCLUSTER)["RayCluster"]["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]})
    return pods


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def mlflow_servers() -> dict[str, list[str]]:
    """The ``mlflow server`` command line of each config that starts one."""
    head = {c["name"]: c for c in raycluster_pods()["head"]["containers"]}
    return {
        "launcher": shell_args(load(LAUNCHER)["head_start_ray_commands"], "mlflow", "server"),
        "raycluster": head["mlflow"]["command"],
    }


def strict(schema):
    """A CRD schema that rejects unknown fields, as `kubectl apply` (strict field validation)
    does: the CRDs only list the fields they know."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


def kuberay_schema(kind: str) -> dict:
    return strict(json.loads((SCHEMAS / f"kuberay-{KUBERAY}-{kind.lower()}.schema.json").read_text()))


UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q: str) -> int:
    """Bytes of a Kubernetes quantity: ``quantity("20Gi") == 20 * 2**30``."""
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", str(q)).groups()
    return int(number) * UNITS[unit]


def allows(policy: dict, action: str, resource: str) -> bool:
    """Whether an IAM policy has an Allow statement for ``action`` on ``resource`` (wildcards
    as IAM matches them; conditions aside)."""
    def listed(value):
        return [value] if isinstance(value, str) else value

    return any(
        st["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in listed(st["Action"]))
        and any(fnmatch.fnmatchcase(resource, r) for r in listed(st["Resource"]))
        for st in policy["Statement"]
    )


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_cluster_yaml_parses_and_comments_its_keys(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)
    # The launcher's node types nest their keys two levels down; Kubernetes objects one.
    assert uncommented_keys(path, max_indent=8 if path == LAUNCHER else 2) == []


def test_the_launcher_config_is_valid_for_ray():
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


def test_the_launcher_head_may_start_and_stop_worker_instances():
    cfg = load(LAUNCHER)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["node_config"]
    workers = [t["node_config"] for name, t in types.items() if name != cfg["head_node_type"]]
    head_profile = head["IamInstanceProfile"]["Name"]
    worker_profiles = {w["IamInstanceProfile"]["Name"] for w in workers}
    assert head_profile not in worker_profiles  # workers get no rights over instances

    # The autoscaler runs on the head with the head's role: it launches, tags, finds, stops
    # and terminates workers, and hands them their own profile.
    autoscaler = json.loads((AWS / "autoscaler-policy.json").read_text())
    for action in ["ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances",
                   "ec2:DescribeInstanceTypes", "ec2:DescribeSubnets", "ec2:StartInstances",
                   "ec2:StopInstances", "ec2:TerminateInstances"]:
        assert allows(autoscaler, action, "*"), action
    for profile in worker_profiles:  # cluster/README.md names each role like its profile
        assert allows(autoscaler, "iam:PassRole", f"arn:aws:iam::123456789012:role/{profile}")
    assert not allows(autoscaler, "iam:PassRole", f"arn:aws:iam::123456789012:role/{head_profile}")

    # cluster/README.md attaches the autoscaler policy to the head's role and the bucket to both.
    readme = README.read_text()
    assert re.search(rf"--role-name {head_profile} .*file://cluster/aws/autoscaler-policy\.json", readme)
    for profile in {head_profile} | worker_profiles:
        assert re.search(rf"--role-name {profile} .*file://cluster/aws/bucket-policy\.json", readme), profile


def test_the_bucket_policy_covers_every_s3_uri_in_the_configs():
    bucket = json.loads((AWS / "bucket-policy.json").read_text())
    uris = set()
    for path in [LAUNCHER, RAYCLUSTER, RAYJOB]:
        uris |= set(re.findall(r"s3://[A-Za-z0-9][\w.-]*/[\w./-]+", path.read_text()))
    assert uris
    for uri in uris:
        url = urlparse(uri)
        key = f"arn:aws:s3:::{url.netloc}{url.path.rstrip('/')}"
        assert allows(bucket, "s3:ListBucket", f"arn:aws:s3:::{url.netloc}"), uri
        for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]:
            assert allows(bucket, action, key + "/trials/t1/final.json"), (uri, action)


def test_the_launcher_head_is_on_demand():
    # Spot is acceptable for workers only: a trial retries from its checkpoint in --storage,
    # but the head holds the drivers, the autoscaler and MLflow.
    cfg = load(LAUNCHER)
    assert "InstanceMarketOptions" not in cfg["available_node_types"][cfg["head_node_type"]]["node_config"]


@pytest.mark.parametrize("where", ["launcher", "raycluster"])
def test_mlflow_stores_artifacts_itself_and_is_not_open_to_the_network(where):
    mlflow = mlflow_servers()[where]
    assert flag(mlflow, "--backend-store-uri").startswith(("sqlite:///", "postgresql://"))
    # Proxied artifacts: the server writes the bucket, clients upload through it.
    assert (flag(mlflow, "--artifacts-destination") or "").startswith(("s3://", "gs://"))
    assert flag(mlflow, "--default-artifact-root") is None and "--no-serve-artifacts" not in mlflow
    # MLflow has no auth of its own: loopback only, unless its basic-auth app is in front.
    host = flag(mlflow, "--host") or flag(mlflow, "-h")
    assert host in ("127.0.0.1", "localhost") or flag(mlflow, "--app-name") == "basic-auth", host
    # Port-forwards and SSH tunnels arrive as localhost/127.0.0.1 on any local port.
    allowed = flag(mlflow, "--allowed-hosts").split(",")
    assert {"localhost:*", "127.0.0.1:*"} <= set(allowed)


def test_the_launcher_mlflow_runs_without_job_execution_workers():
    commands = load(LAUNCHER)["head_start_ray_commands"]
    assert any("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in c and "mlflow server" in c for c in commands)


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


def test_the_raycluster_mlflow_sidecar_serves_the_drivers_on_the_head_loopback():
    containers = {c["name"]: c for c in raycluster_pods()["head"]["containers"]}
    mlflow = containers["mlflow"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    port = flag(mlflow["command"], "--port")
    # Job drivers run in the ray-head container of the same pod, so loopback reaches it.
    tracking = urlparse(env_of(containers["ray-head"])["MLFLOW_TRACKING_URI"])
    assert (tracking.hostname, str(tracking.port)) == ("127.0.0.1", port)
    allowed = flag(mlflow["command"], "--allowed-hosts").split(",")
    assert any(fnmatch.fnmatchcase(tracking.netloc, pattern) for pattern in allowed)
    assert env_of(mlflow)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # An httpGet probe dials the pod IP, which a loopback-bound server never answers.
    assert not any("httpGet" in mlflow.get(probe, {}) for probe in
                   ("livenessProbe", "readinessProbe", "startupProbe"))
    assert "readinessProbe" not in mlflow  # an unready sidecar would unready the head's job server
    assert "Service" not in kinds(RAYCLUSTER)  # nothing in the cluster network may reach it


@pytest.mark.parametrize("path, kind", [(RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")],
                         ids=["RayCluster", "RayJob"])
def test_the_kuberay_manifests_are_valid_for_the_oldest_supported_kuberay(path, kind):
    jsonschema.validate(kinds(path)[kind], kuberay_schema(kind))


def test_a_misspelt_or_too_new_field_fails_the_kuberay_schema():
    cluster = kinds(RAYCLUSTER)["RayCluster"]
    typo = copy.deepcopy(cluster)
    typo["spec"]["authOption"] = typo["spec"].pop("authOptions")
    too_new = copy.deepcopy(cluster)
    too_new["spec"]["authOptions"]["secretName"] = "mine"  # KubeRay 1.6
    for bad in (typo, too_new):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, kuberay_schema("RayCluster"))


def test_kuberay_turns_on_token_auth_for_every_ray_process():
    cluster = kinds(RAYCLUSTER)["RayCluster"]
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    major, minor, _ = (int(x) for x in cluster["spec"]["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # the operator refuses token mode on older Ray
    # The operator injects RAY_AUTH_MODE/RAY_AUTH_TOKEN into the Ray containers, the
    # autoscaler and the RayJob submitter; a hand-written copy would shadow its Secret.
    job = kinds(RAYJOB)["RayJob"]
    containers = [c for pod in raycluster_pods().values() for c in pod["containers"]]
    containers += job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    for container in containers:
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(env_of(container)), container["name"]
    # The RayJob runs on that cluster, so its status polling uses that cluster's token.
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}


@pytest.mark.parametrize("group", list(raycluster_pods()))
def test_ray_pods_keep_cache_and_scratch_on_node_disk_they_request(group):
    pod = raycluster_pods()[group]
    ray = pod["containers"][0]  # KubeRay's Ray container is the first
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
    needed = 0
    for path in NODE_DISK:
        empty_dir = volumes[mounts[path]]["emptyDir"]
        needed += quantity(empty_dir["sizeLimit"])
    # Requested, so the scheduler finds the disk and the kubelet does not evict the pod for it.
    assert quantity(ray["resources"]["requests"]["ephemeral-storage"]) >= needed


def test_the_rayjob_runs_a_claims_search_command_on_the_raycluster():
    job = kinds(RAYJOB)["RayJob"]
    cluster = kinds(RAYCLUSTER)["RayCluster"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "claims-search" and argv[1] == "search"
    assert flag(argv, "--data").startswith(("s3://", "gs://"))  # shared storage, not a node's disk
    assert flag(argv, "--storage").startswith(("s3://", "gs://"))
    head = env_of(raycluster_pods()["head"]["containers"][0])
    assert flag(argv, "--tracking-uri") == head["MLFLOW_TRACKING_URI"]  # the head's sidecar
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["CLAIMS_SEARCH_STORAGE_PATH"] == flag(argv, "--storage") == head["CLAIMS_SEARCH_STORAGE_PATH"]
    assert env["MLFLOW_TRACKING_URI"] == head["MLFLOW_TRACKING_URI"]
    # Entrypoint resources would let Ray run the driver on a worker, away from MLflow.
    assert not {"entrypointNumCpus", "entrypointNumGpus", "entrypointResources"} & set(job["spec"])
    if (ROOT / "claims_search" / "commands" / "search.py").exists():
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


def test_one_minimum_kuberay_version_everywhere():
    for kind in ("RayCluster", "RayJob"):
        assert json.loads((SCHEMAS / f"kuberay-{KUBERAY}-{kind.lower()}.schema.json").read_text())[
            "$comment"].startswith(f"KubeRay v{KUBERAY} ")
    for path in [RAYCLUSTER, RAYJOB]:
        assert f">= {KUBERAY}" in path.read_text(), path.name
    assert f"--version {KUBERAY}" in README.read_text()


def test_no_config_lets_job_drivers_leave_the_head():
    # MLflow listens on the head's loopback: the drivers must stay there.
    for path in [LAUNCHER, RAYCLUSTER, RAYJOB, DOCKERFILE]:
        assert "RAY_JOB_ALLOW_DRIVER_ON_WORKER_NODES" not in path.read_text(), path.name


def test_the_s3_compatible_store_settings_are_shown_where_they_apply():
    text = RAYCLUSTER.read_text()
    # claims-search (data, Tune, Train, search state) on the Ray pods; MLflow's own client.
    assert "CLAIMS_SEARCH_S3_ENDPOINT" in text and "MLFLOW_S3_ENDPOINT_URL" in text
    readme = README.read_text()
    for name in ("CLAIMS_SEARCH_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                 "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "minio"):
        assert name in readme, name


def test_the_readme_lists_every_file_a_search_writes():
    readme = README.read_text()
    for where in ["<storage>/<search>/tune/", "<storage>/<search>/trials/<trial_id>/train/",
                  "<storage>/<search>/trials/<trial_id>/pretrain/", "finetune-<task>/",
                  "<storage>/<search>/trials/<trial_id>/final.json", "<storage>/<search>/state/",
                  "outbox.jsonl", "sent.jsonl", "search.json", "optuna.db",
                  "$CLAIMS_SEARCH_STATE_DIR/<search>", "~/.cache/claims-search/<hash>/",
                  "$TMPDIR/claims-search-trials/<trial_id>/", "$TMPDIR/claims-search-scratch/<trial_id>/",
                  "--artifacts-destination"]:
        assert where in readme, where


def test_the_readme_covers_every_cluster_file():
    readme = README.read_text()
    for path in [LAUNCHER, RAYCLUSTER, RAYJOB, DOCKERFILE, *sorted(AWS.glob("*.json"))]:
        assert str(path.relative_to(CLUSTER.parent)) in readme, path.name
    for must in ("port-forward", "claims-search submit", "s3://", "--allowed-hosts", "authOptions",
                 "ephemeral-storage", "iam:PassRole"):
        assert must in readme, must


def tested_torch() -> str:
    """The torch version the tests run: constraints/cpu.txt's pin (its CPU build)."""
    pins = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    return next(l.split("==", 1)[1].strip() for l in pins if l.startswith("torch=="))


def test_the_image_installs_the_tested_torch_built_for_its_cuda():
    import torch

    version = tested_torch()
    assert torch.__version__.split("+")[0] == version  # the suite runs what is pinned
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    image = next(l.split()[1] for l in text.splitlines() if l.startswith("FROM "))
    cuda = image.rsplit("-", 1)[1]
    assert re.fullmatch(r"cu\d{3}", cuda), f"name the image's CUDA ({image}), not the -gpu alias"
    assert args["TORCH"] == version, "cluster/Dockerfile's torch differs from the tested pin"
    assert args["CUDA"] == cuda
    assert '"torch==${TORCH}+${CUDA}" --index-url https://download.pytorch.org/whl/${CUDA}' in text
    assert "-c /home/ray/torch-constraint.txt -e ." in text  # pyproject's range cannot swap it
    # The launcher's nodes run the same image flavour and install the same torch.
    cfg = load(LAUNCHER)
    assert cfg["docker"]["image"].endswith(f"-{cuda}")
    assert (f'pip install -q "torch=={version}+{cuda}" --index-url '
            f"https://download.pytorch.org/whl/{cuda}") == cfg["setup_commands"][0]


def test_gpu_nodes_name_an_ami_whose_driver_runs_the_image_cuda():
    cfg = load(LAUNCHER)
    gpu = {n: t for n, t in cfg["available_node_types"].items() if t["resources"].get("GPU")}
    assert gpu
    for name, t in gpu.items():
        assert t["node_config"]["ImageId"].startswith("ami-"), name
    text = LAUNCHER.read_text()
    assert text.count("base-oss-nvidia-driver-gpu-ubuntu-22.04") == len(gpu)
    # CUDA 13.0 needs driver 580 or newer: said beside the image and in the README.
    assert "cu130" in DOCKERFILE.read_text() and "580" in DOCKERFILE.read_text()
    assert "driver 580" in README.read_text() and "ImageId" in README.read_text()
