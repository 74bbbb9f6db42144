"""Vendor a KubeRay CRD's ``ray.io/v1`` OpenAPI schema as JSON, for tests/test_cluster_files.py
(the tests run offline). From a checkout of github.com/ray-project/kuberay (tag v1.5.1 =
commit 9e8a2c085b7b7c96cf7cc5d857787bc2d78406c6):

    git -C kuberay show v1.5.1:ray-operator/config/crd/bases/ray.io_rayclusters.yaml \\
        | python tests/schemas/crd_schema.py v1.5.1 > tests/schemas/kuberay-1.5.1-raycluster.schema.json
    git -C kuberay show v1.5.1:ray-operator/config/crd/bases/ray.io_rayjobs.yaml \\
        | python tests/schemas/crd_schema.py v1.5.1 > tests/schemas/kuberay-1.5.1-rayjob.schema.json

The minimum KubeRay version the manifests support (not the newest) is vendored on purpose: a
field added later (e.g. ``authOptions.secretName`` in 1.6) then fails the test.
"""

import json
import sys

import yaml

crd = yaml.safe_load(sys.stdin)
(v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
schema = {"$comment": f"KubeRay {sys.argv[1]} {crd['metadata']['name']} v1 openAPIV3Schema (tests/schemas/crd_schema.py)"}
schema.update(v1["schema"]["openAPIV3Schema"])
json.dump(schema, sys.stdout, sort_keys=True, separators=(",", ":"))
sys.stdout.write("\n")
