"""A trial's reported result as ``TrialRecord``s, one per task: what the tracker, the frontier and
the search policy read. Below ``search``, ``search_tune`` and ``search_policy``, which all read
records this way (so none of them imports another for it)."""

from __future__ import annotations

import json

from claims_search.results.frontier import TrialRecord
from claims_search.search.trial import cost_value


def device_kind(device: str) -> str:
    """``cpu`` or the accelerator's name: what a cost's seconds are seconds of (thread counts and
    several devices of one kind are the same kind)."""
    first = device.split(" + ")[0].strip()
    return "cpu" if first.startswith("cpu") else first.split(" (")[0]


def _extras(metrics: dict, cost: dict) -> dict[str, float]:
    keep = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    keep.update({f"cost_{k}": float(v) for k, v in cost.items() if isinstance(v, (int, float))})
    return keep


def records_from_result(trial_id: str, result: dict, tasks: list[str], space) -> list[TrialRecord]:
    """A trial's last reported result -> one TrialRecord per task. A trial that did not report
    ``status: complete`` (pruned, stopped by a scheduler or a time budget, failed) is recorded
    with that status and no metric, so it can never enter a frontier."""
    status = result.get("status")
    cfg = json.loads(result["trial_config"]) if "trial_config" in result else {}
    pre_cost = json.loads(result["pretrain_cost"]) if "pretrain_cost" in result else None
    n_params = result.get("n_params")
    tags = {k: str(result[k]) for k in ("reason", "rung") if result.get(k) is not None}
    if result.get("node_id"):  # where it ran: the trial driver's node and every Train rank's
        tags["driver_node"] = str(result["node_id"])
        tags["rank_nodes"] = ",".join(json.loads(result.get("rank_nodes") or "[]"))
    if result.get("total_cost"):
        tags["device"] = device_kind(json.loads(result["total_cost"]).get("device", ""))
    if status != "complete":
        st = "failed" if status == "failed" else "pruned"
        # A size stopped at a rung is charged what it trained (its pretraining so far).
        extras = {"rung": float(result["rung"])} if result.get("rung") is not None else {}
        return [TrialRecord(trial_id, t, st, cfg, n_params, None, None, None, None,
                            cost_value(pre_cost, space.cost), None, tags=tags, extras=dict(extras)) for t in tasks]
    per_task = json.loads(result["tasks"])
    out = []
    for t in tasks:
        r = per_task[t]
        m = r["metrics"]
        pc, fc = cost_value(pre_cost, space.cost) or 0.0, cost_value(r["finetune_cost"], space.cost) or 0.0
        extras = _extras(m, r["finetune_cost"])
        if result.get("pretrain_val_loss") is not None:  # None: fine-tuned from scratch
            extras["pretrain_val_loss"] = float(result["pretrain_val_loss"])
        extras["total_cost"] = float(cost_value(json.loads(result["total_cost"]), space.cost) or 0.0)
        if "trial_wall_s" in result:  # where a trial's time went: the training loop vs the rest
            extras["trial_wall_s"] = float(result["trial_wall_s"])
            extras["train_loop_s"] = float(json.loads(result["total_cost"])["wall_s"])
            for phase, secs in json.loads(result.get("timings") or "{}").items():
                extras[f"time_{phase}_s"] = float(secs)
        out.append(TrialRecord(trial_id, t, "complete", cfg, n_params, m[space.metric], m[f"{space.metric}_low"],
                               m[f"{space.metric}_high"], pc + fc, pc, fc, checkpoint=r["checkpoint"],
                               extras=extras, tags=tags, predictions=r.get("predictions")))
    return out
