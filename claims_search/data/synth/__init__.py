"""Synthetic Japanese-style claims with planted, known task difficulty, written as MEDS.

``generate(out_dir, patients, seed, workers=2, shard_size=25_000)`` is the entry point; see
docs/synthetic.md for how the world works. Modules, in the order data flows:
``codes`` (catalogue) -> ``world`` (latent conditions, CKD risk) -> ``people`` (demography,
enrolment, checkups) -> ``simulate`` (one shard, vectorised) with ``tasks`` (planting the
outcomes, the oracle) and ``emit`` (claims events) -> ``writer`` (sharded MEDS, atomic).
``complexity`` is the opt-in family of tasks whose risk needs more capacity as k rises
(``generate(..., complexity=True)``).
"""

from claims_search.data.synth.writer import DEFAULT_SHARD_SIZE, generate

__all__ = ["generate", "DEFAULT_SHARD_SIZE"]
