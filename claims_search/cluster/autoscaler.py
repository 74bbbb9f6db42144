"""Ray edge: does the connected cluster autoscale, and with which node types (``capacity``).

Ray's GCS keeps the autoscaler's status (``__autoscaling_status``, written every few seconds,
also by the read-only autoscaler of a local instance, whose node types are its nodes) and, with
autoscaler v2 or KubeRay, the cluster config. The v1 autoscaler started by ``ray up`` or ``ray
start --autoscaling-config`` does not publish its node types: they are read from its config
file, which the monitor process on the head was started with.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from claims_search.cluster.capacity import BOOTSTRAP_CONFIG, NodeType, from_gcs_config, load_launcher_config

log = logging.getLogger(__name__)
STATUS_KEY = "__autoscaling_status"


def node_types(cluster_config: str | None = None) -> list[NodeType] | None:
    """The node types the running cluster can have (call after ``ray.init``); None when it does
    not autoscale, [] when it does but its node types are nowhere to be read. ``cluster_config``:
    a launcher YAML that overrides what the cluster says of itself."""
    from ray._private.state import state
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(STATUS_KEY)
    if cluster_config:
        return load_launcher_config(cluster_config)
    try:
        gcs = from_gcs_config(state.get_cluster_config())
    except Exception:  # noqa: BLE001 - an older GCS without the call: fall back to the files
        gcs = []
    if gcs:
        return gcs
    path = _monitor_config(status)
    if path is not None and Path(path).is_file():  # the monitor runs with a cluster config
        return load_launcher_config(path)
    if not scales(status):
        return None  # a fixed cluster (a local instance, `ray start` nodes): its nodes are all it has
    if BOOTSTRAP_CONFIG.expanduser().is_file():
        return load_launcher_config(BOOTSTRAP_CONFIG.expanduser())
    log.warning("the cluster autoscales, but its node types are not readable here (no cluster config in Ray's "
                "GCS, no %s); trials are not checked against them (pass --cluster-config FILE)", BOOTSTRAP_CONFIG)
    return []


def scales(status: bytes | str | dict | None) -> bool:
    """Whether the autoscaler status (as Ray's GCS keeps it, or as the dashboard's
    ``/api/cluster_status`` returns it, keys in camelCase) names node types of its own: a local
    instance or `ray start` nodes have a read-only autoscaler whose node types are the nodes
    themselves (``node_<id>``)."""
    try:
        data = status if isinstance(status, dict) else json.loads(status or b"{}")
        report = data.get("autoscaler_report") or data.get("autoscalerReport") or {}
        mapping = report.get("node_type_mapping") or report.get("nodeTypeMapping") or {}
    except (ValueError, AttributeError):
        return False
    return any(not re.fullmatch(r"node_[0-9a-f]+", str(t)) for t in mapping.values())


def _monitor_config(status: bytes | None) -> str | None:
    """The ``--autoscaling-config`` the autoscaler's monitor process was started with, when that
    process runs on this node (the head, where a submitted search's driver runs)."""
    import psutil

    try:
        pid = json.loads(status or b"{}").get("monitor_pid")
        cmdline = psutil.Process(int(pid)).cmdline() if pid else []
    except (ValueError, TypeError, psutil.Error):
        return None
    for i, arg in enumerate(cmdline):
        if arg.startswith("--autoscaling-config="):
            return arg.split("=", 1)[1]
        if arg == "--autoscaling-config" and i + 1 < len(cmdline):
            return cmdline[i + 1]
    return None
