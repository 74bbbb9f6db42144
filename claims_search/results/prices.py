"""One cost axis when device kinds mix. Plain Python.

A search's Transformers train on GPUs and its LightGBM baseline on CPU cores; a search resumed
on another cluster may mix GPU kinds. Their device-seconds are not the same unit: a frontier,
a hypervolume or a "cheaper" verdict over both would compare seconds of an H100 with seconds of
one CPU core. When a task's records were measured on more than one kind of device, every cost
of that task is priced per kind into **GPU-hour equivalents** (device-hours x the kind's
price), and that unit is named wherever the costs are shown.

The default prices are round placeholders (an A10G-hour is 1), not measured or quoted prices:
set your own in the space (``prices: {H100: 4.0, cpu: 0.05}``), matched by name: a kind costs
the price of the longest table key its name contains ("NVIDIA H100 80GB HBM3" -> ``H100``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Mapping

from claims_search.results.frontier import TrialRecord

log = logging.getLogger(__name__)

UNIT = "gpu_hour_equivalents"
DEFAULT_PRICES: dict[str, float] = {
    "H200": 5.0, "H100": 4.0, "A100": 2.5, "L40S": 1.5, "A10G": 1.0, "L4": 0.7, "T4": 0.4, "cpu": 0.05,
}


def price_of(kind: str, table: Mapping[str, float]) -> float | None:
    """The price per device-hour of ``kind`` (``cpu`` or an accelerator's name), or None."""
    if kind in table:
        return float(table[kind])
    hits = [k for k in table if k.lower() in kind.lower()]
    return float(table[max(hits, key=len)]) if hits else None


def device_kinds(records: Iterable[TrialRecord], task: str) -> list[str]:
    """The kinds of device the usable records of ``task`` were measured on."""
    return sorted({r.tags.get("device", "") for r in records if r.task == task and r.usable} - {""})


def on_one_axis(records: list[TrialRecord], task: str, cost: str,
                table: Mapping[str, float] | None = None) -> tuple[list[TrialRecord], str]:
    """``(records, unit)``: the records as they are when ``task``'s costs share one kind of
    device (or are not device-seconds), else with ``task``'s costs priced into GPU-hour
    equivalents. A kind the table lacks costs 1 (with a warning naming it)."""
    kinds = device_kinds(records, task)
    if cost != "device_seconds" or len(kinds) < 2:
        return records, cost
    table = DEFAULT_PRICES if table is None else table
    rates = {}
    for kind in kinds:
        price = price_of(kind, table)
        if price is None:
            log.warning("%s: no price for device %r (prices: %s); counted as 1 GPU-hour equivalent per hour",
                        task, kind, ", ".join(sorted(table)))
            price = 1.0
        rates[kind] = price / 3600.0

    def priced(r: TrialRecord) -> TrialRecord:
        if r.task != task or r.tags.get("device", "") not in rates:
            return r
        rate = rates[r.tags["device"]]
        return dataclasses.replace(r, **{f: None if getattr(r, f) is None else getattr(r, f) * rate
                                         for f in ("cost", "pretrain_cost", "finetune_cost")})

    return [priced(r) for r in records], UNIT
