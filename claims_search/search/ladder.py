"""The ladder policy's Ray edge: the policy (``policy.py``) lives in one named Ray actor; Ray
Tune asks it which size to start (:class:`PolicySearcher`), a pretraining's rank 0 asks it at
each rung (:func:`asker`), and finished trials tell it their results and the paired rule's pick.

Nothing patient-level reaches the actor: the pick is computed here, in the driver, from the
trials' prediction files (as ``summary.py`` does), and only keys and aggregate metrics travel.
"""

from __future__ import annotations

import logging
import statistics

from ray.tune.search import Searcher

from claims_search.search.policy import Candidate, Done, Pick, Settings, SizePolicy, Train, Wait
from claims_search.model.sizes import size_key

log = logging.getLogger(__name__)

NAMESPACE = "claims-search"


def candidates(space, vocab_size: int) -> dict[str, tuple[Candidate, dict]]:
    """Every size of a ladder space: key -> (Candidate with its training FLOPs, Tune config).

    The cost that orders them is training FLOPs at full length (``ModelSize.flops_per_token`` x
    the pretraining and every fine-tuning's tokens): known before anything runs."""
    from claims_search.model.sizes import ModelSize

    out = {}
    for sample in space.full_samples():
        cfg = space.sample_to_trial_config(sample)
        size = ModelSize(**cfg["model"])
        tokens = (cfg["pretrain"].get("steps", 0) * cfg["pretrain"].get("batch_tokens", 0)
                  + len(space.task_names) * cfg["finetune"].get("steps", 0) * cfg["finetune"].get("batch_tokens", 0))
        flops = size.flops_per_token(vocab_size, size.max_len) * tokens
        key = size_key(cfg["model"])
        if key in out:
            raise ValueError(f"two sizes of the ladder share the name {key}")
        out[key] = (Candidate(key, float(flops), size.n_params(vocab_size)), sample)
    return out


def settings(space) -> Settings:
    """The policy's settings from the space's ``sampler`` entry."""
    s = space.sampler
    return Settings(delta=s.delta, rungs=tuple(s.rungs), z=s.z, warmup_sizes=s.warmup_sizes, skip_ahead=s.skip_ahead)


class PolicyHolder:
    """The policy, as a Ray actor's state (plain methods; made remote by :func:`start_actor`)."""

    def __init__(self, cands: list[Candidate], tasks: list[str], s: Settings):
        self.policy = SizePolicy(cands, tasks, s)
        self.reasons: dict[str, str] = {}

    def propose(self):
        return self.policy.propose()

    def at_rung(self, key: str, fraction: float, loss: float) -> tuple[bool, str]:
        v = self.policy.at_rung(key, fraction, loss)
        self.reasons[key] = v.reason
        return v.go_on, v.reason

    def finished(self, key: str, metrics: dict, picks: dict) -> None:
        self.policy.finished(key, metrics, picks)

    def stopped(self, key: str) -> None:
        self.policy.stopped(key)

    def failed(self, key: str) -> None:
        self.policy.failed(key)

    def snapshot(self) -> SizePolicy:
        return self.policy

    def restore(self, policy: SizePolicy) -> None:
        self.policy = policy


def start_actor(name: str, cands: list[Candidate], tasks: list[str], s: Settings):
    """The named policy actor of one search (it dies with the driver)."""
    import ray

    holder = ray.remote(num_cpus=0)(PolicyHolder)
    return holder.options(name=name, namespace=NAMESPACE).remote(cands, tasks, s)


class PolicySearcher(Searcher):
    """Ray Tune's searcher for a ladder space: it starts the sizes the policy proposes, waits
    when it says wait, ends the search when it says done, and tells it how each trial ended."""

    def __init__(self, actor_name: str, cands: dict[str, tuple[Candidate, dict]], space):
        super().__init__()
        self.actor_name, self.cands, self.space = actor_name, cands, space
        self.keys: dict[str, str] = {}  # Tune trial id -> size key
        self.records: list = []  # complete trials' TrialRecords: the paired rule's input
        self.done: Done | None = None

    @property
    def actor(self):
        """Looked up by name, so a searcher Tune restores on ``--resume`` finds the new actor."""
        import ray

        return ray.get_actor(self.actor_name, namespace=NAMESPACE)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the sizes are the policy's: Tune's param_space is left empty

    def suggest(self, trial_id: str):
        import ray

        step = ray.get(self.actor.propose.remote())
        if isinstance(step, Done):
            self.done = step
            return Searcher.FINISHED
        if isinstance(step, Wait):
            return None
        assert isinstance(step, Train)
        self.keys[trial_id] = step.key
        return self.cands[step.key][1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self.keys.get(trial_id)
        if key is None:
            return
        result = result or {}
        status = result.get("status")
        if error or status == "failed":
            self.actor.failed.remote(key)
        elif status != "complete":
            self.actor.stopped.remote(key)
        else:
            from claims_search.search.trial_records import records_from_result

            recs = records_from_result(trial_id, result, self.space.task_names, self.space)
            self.records += recs
            metrics = {r.task: r.metric for r in recs}
            self.actor.finished.remote(key, metrics, self.picks())

    def picks(self) -> dict[str, Pick]:
        """The paired rule's answer per task over the complete trials (``recommend.recommend``,
        no baseline: the policy chooses among sizes), with its noise of a paired difference."""
        from claims_search.results.recommend import recommend
        from claims_search.results.summary import load_predictions

        out = {}
        rs = self.space.recommend
        for task in self.space.task_names:
            rec = recommend(self.records, task, load_predictions, metric=self.space.metric, margin=rs.margin,
                            tolerance=rs.tolerance, min_gain_per_doubling=rs.min_gain_per_doubling)
            if rec is None:
                continue
            out[task] = Pick(size_key(rec.record.model), float(rec.record.metric), _noise(rec))
        return out

    def save(self, checkpoint_path: str) -> None:
        import pickle

        import ray

        with open(checkpoint_path, "wb") as f:
            pickle.dump({"keys": self.keys, "records": self.records,
                         "policy": ray.get(self.actor.snapshot.remote())}, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.keys, self.records = saved["keys"], saved["records"]
        self.actor.restore.remote(saved["policy"])


def _noise(rec) -> float:
    """The standard error of a paired difference at the pick: the median over the paired
    comparisons' 95 % intervals; without any, the pick's own interval (its level's error, which
    is larger than a paired difference's: cautious)."""
    widths = [c.high - c.low for c in rec.comparisons if c.low is not None and c.high is not None]
    if widths:
        return statistics.median(widths) / (2 * 1.96)
    r = rec.record
    if r.metric_low is None or r.metric_high is None:
        return 0.0
    return (r.metric_high - r.metric_low) / (2 * 1.96)

