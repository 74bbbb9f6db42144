"""What a run cost: wall time, device time, real tokens, estimated FLOPs, parameters, memory.

Pretraining and fine-tuning each get their own ``Cost``; ``a + b`` charges both (a search
charges one pretraining once across tasks and adds each task's fine-tuning).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Cost:
    """One run's cost. ``device_s`` = wall_s x n_devices, where ``n_devices`` is what the run
    held: GPUs (workers x GPUs per worker, fractions included), or CPU cores for a CPU run;
    ``wall_s`` is the training's own time: the best-step evaluations (``eval_s``) and the
    checkpoint writes (``checkpoint_s``) are recorded beside it, not in it. ``tokens`` are real
    (non-padding); ``flops`` are estimated from ``sizes.ModelSize.flops_per_token``;
    ``peak_mem_bytes`` is the CUDA max allocated memory, or the process RSS high-water mark on CPU."""

    wall_s: float = 0.0
    device_s: float = 0.0
    tokens: int = 0
    flops: float | None = 0.0  # None where there is no FLOP estimate (the tree baseline)
    n_params: int = 0
    peak_mem_bytes: int = 0
    device: str = ""
    n_devices: float = 0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        if not isinstance(other, Cost):
            return NotImplemented
        devices = [d for d in dict.fromkeys([self.device, other.device]) if d]
        return Cost(
            wall_s=self.wall_s + other.wall_s,
            device_s=self.device_s + other.device_s,
            tokens=self.tokens + other.tokens,
            flops=None if self.flops is None or other.flops is None else self.flops + other.flops,
            n_params=max(self.n_params, other.n_params),
            peak_mem_bytes=max(self.peak_mem_bytes, other.peak_mem_bytes),
            device=" + ".join(devices),
            n_devices=max(self.n_devices, other.n_devices),
            eval_s=self.eval_s + other.eval_s,
            checkpoint_s=self.checkpoint_s + other.checkpoint_s,
        )

    def to_dict(self) -> dict:
        """Plain JSON-able dict (field name -> value)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Cost":
        """Inverse of ``to_dict`` (unknown keys ignored)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def devices_held(resources_per_worker: dict) -> float:
    """What one worker holds, for device-seconds: its GPUs (fractions too: half a GPU is half
    charged), else its CPU cores (Ray Train's ``{"CPU": 0.99}`` asks for one)."""
    gpus = float(resources_per_worker.get("GPU") or 0)
    return gpus if gpus > 0 else float(max(1, round(resources_per_worker.get("CPU", 1))))


def device_name(device) -> str:
    """A readable hardware name: the CUDA card's name, else the CPU's."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _rss_high_water() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class CostMeter:
    """Context that times a run and adds up what the loop feeds it.

    >>> with CostMeter(n_params=n, device="cpu") as meter:
    ...     meter.add(tokens=batch.n_tokens, flops=batch.n_tokens * flops_per_token)
    >>> meter.cost
    """

    def __init__(self, n_params: int, device="cpu", n_devices: float = 1):
        self.n_params = n_params
        self.device = device
        self.n_devices = n_devices
        self.tokens = 0
        self.flops = 0.0
        self._start: float | None = None
        self._wall = 0.0
        self._aside = {"eval": 0.0, "checkpoint": 0.0}

    @contextlib.contextmanager
    def aside(self, kind: str):
        """Time spent in this block is not training: it goes to ``<kind>_s`` ("eval" or
        "checkpoint") instead of the wall time (inside the meter's context)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self._aside[kind] += spent
            if self._start is not None:
                self._wall -= spent  # the open span will count it: take it back now

    def __enter__(self) -> "CostMeter":
        import torch

        if torch.device(self.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)  # count queued kernels in the wall time
        self._wall += time.perf_counter() - self._start
        self._start = None

    def add(self, tokens: int, flops: float) -> None:
        """Count one step's real tokens and its estimated FLOPs."""
        self.tokens += int(tokens)
        self.flops += float(flops)

    @property
    def wall_s(self) -> float:
        running = time.perf_counter() - self._start if self._start is not None else 0.0
        return self._wall + running

    @property
    def cost(self) -> Cost:
        """The cost so far (usable inside or after the context)."""
        import torch

        if torch.device(self.device).type == "cuda":
            # Synchronise so the wall time includes queued kernels.
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_high_water()
        wall = self.wall_s
        return Cost(
            wall_s=wall,
            device_s=wall * self.n_devices,
            tokens=self.tokens,
            flops=self.flops,
            n_params=self.n_params,
            peak_mem_bytes=int(peak),
            device=device_name(self.device),
            n_devices=self.n_devices,
            eval_s=self._aside["eval"],
            checkpoint_s=self._aside["checkpoint"],
        )
