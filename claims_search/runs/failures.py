"""One line out of an error report: what a failed trial says about why. Below ``trial`` and
``train_ray``, which both word their failures this way."""

from __future__ import annotations

import re

from claims_search.model import memory


def failure_reason(text: str) -> str:
    """One line out of an error report (a traceback, Ray's worker-group error): the last line
    naming an exception, or, for a process that died without one, what Ray says that means."""
    if memory.is_cuda_oom(text):  # the GPU's memory, not the node's: the configuration's failure
        return ("CUDA out of memory: the training step does not fit the GPU; lower batch_tokens or raise "
                "grad_accum (set budget.gpu_memory_gb to refuse such configurations at load)")
    if "low on memory" in text or "OutOfMemoryError" in text or "out of memory issue" in text:
        # Ray's memory monitor killed a worker: say so, with the node's use when Ray gave it.
        used = re.search(r"was ([\d.]+)GB used / ([\d.]+)GB limit", text)
        return ("a Ray Train worker was killed by Ray's memory monitor: the node ran low on memory"
                + (f" ({used[1]} of {used[2]} GB)" if used else "")
                + "; try a smaller size or batch_tokens, or fewer trials at once")
    if "worker process has died" in text or "actor died unexpectedly" in text:
        return ("a Ray Train worker process died without a Python error (killed by the kernel's OOM "
                "killer, a SIGKILL, or a crash)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not (ln.startswith("[Rank ") and ln.endswith("Snippet]:"))
             and not ln.startswith("Training failed due to")]
    found = [ln for ln in lines if ("Error" in ln or "Exception" in ln) and not ln.startswith(("File ", "Traceback"))]
    return (found[-1] if found else lines[-1] if lines else "unknown error (no error trace)")[:300]
