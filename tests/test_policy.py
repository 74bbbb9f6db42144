"""The ladder policy on hand-made ladders: it stops where bigger stops paying, and only there."""

import math

import pytest

from claims_search.search.policy import Candidate, Done, Pick, Settings, SizePolicy, Train, Wait, secant

SIZES = [Candidate(f"s{i}", cost=2.0 ** i, n_params=10 ** (4 + i)) for i in range(5)]
# Two warm-up sizes and no skipping ahead: the hand-made ladders below are read step by step.
TWO = Settings(warmup_sizes=2, skip_ahead=False)


def loss_at(i: int, fraction: float) -> float:
    """Pretraining loss of size i at a fraction of its steps: bigger sizes learn faster."""
    return 3.0 - 0.3 * i - math.log2(fraction * 8) * 0.1


def drive(policy: SizePolicy, final: dict[str, list[float]], noise: float = 0.002):
    """Run the policy to Done on a ladder whose size i reaches final[task][i]; the pick is the
    cheapest size within noise of the best so far (a stand-in for the paired rule)."""
    trained, stopped = [], []
    while not isinstance(step := policy.propose(), Done):
        assert not isinstance(step, Wait)  # one at a time: nothing is ever running here
        i = int(step.key[1:])
        if not all(policy.at_rung(step.key, f, loss_at(i, f)).go_on for f in step.rungs):
            policy.stopped(step.key)
            stopped.append(step.key)
            continue
        trained.append(step.key)
        picks = {}
        for task, ys in final.items():
            best = max(ys[int(k[1:])] for k in trained)
            key = next(k for k in trained if ys[int(k[1:])] >= best - noise)
            picks[task] = Pick(key, ys[int(key[1:])], noise)
        policy.finished(step.key, {t: ys[i] for t, ys in final.items()}, picks)
    return step, trained, stopped


def test_a_saturated_task_stops_after_the_warm_up():
    flat = {"medication": [0.60, 0.62, 0.62, 0.62, 0.62]}
    done, trained, stopped = drive(SizePolicy(SIZES, ["medication"], TWO), flat)
    assert done.answer == {"medication": "s1"}
    assert trained == ["s0", "s1", "s2"] and not stopped  # s2 could still have gained; s3 could not
    assert "s3" not in trained
    assert done.line.startswith("stopped:")


def test_a_task_that_keeps_improving_trains_every_size():
    rising = {"disease": [0.50, 0.55, 0.60, 0.65, 0.70]}
    done, trained, stopped = drive(SizePolicy(SIZES, ["disease"], TWO), rising)
    assert trained == ["s0", "s1", "s2", "s3", "s4"] and not stopped
    assert done.answer == {"disease": "s4"} and done.line == "stopped: every size was tried"


def test_one_improving_task_keeps_the_search_going_for_both():
    both = {"medication": [0.60, 0.62, 0.62, 0.62, 0.62], "disease": [0.50, 0.55, 0.60, 0.65, 0.70]}
    done, trained, _ = drive(SizePolicy(SIZES, list(both), TWO), both)
    assert trained[-1] == "s4"
    assert done.answer == {"medication": "s1", "disease": "s4"}


def test_a_size_that_learns_no_faster_is_stopped_at_its_first_rung():
    """s0 -> s1 gained 0.02, so s2 is worth starting; at 1/8 of its pretraining its loss is no
    lower than s1's was, so it is predicted no better than s1, and stopped."""
    p = SizePolicy(SIZES, ["t"], TWO)
    for i, metric in enumerate([0.58, 0.60]):
        assert p.propose() == Train(f"s{i}", (0.125, 0.25))
        assert p.at_rung(f"s{i}", 0.125, loss_at(i, 0.125)).go_on  # warm-up: never stopped
        p.finished(f"s{i}", {"t": metric}, {"t": Pick(f"s{i}", metric, 0.002)})
    assert p.propose() == Train("s2", (0.125, 0.25))
    v = p.at_rung("s2", 0.125, loss_at(1, 0.125))
    assert not v.go_on
    assert v.reason == ("rung 1/8: cannot gain more than δ = 0.01 on any task "
                        "(t: predicted 0.600, +0.000 ± 0.000 against s1 0.600)")


def test_noise_keeps_a_size_that_might_help():
    """The same flat ladder, but a pick whose paired noise is large: the upper bound reaches δ."""
    p = SizePolicy(SIZES, ["t"], TWO)
    for i in range(2):
        p.propose()
        p.finished(f"s{i}", {"t": 0.6}, {"t": Pick("s0", 0.6, 0.02)})
        p.sizes[f"s{i}"].rung_loss[0.125] = loss_at(i, 0.125)
    assert p.at_rung(p.propose().key, 0.125, loss_at(2, 0.125)).go_on


def test_with_room_for_several_trials_the_warm_up_sizes_go_first():
    p = SizePolicy(SIZES, ["t"], TWO)
    assert [p.propose().key, p.propose().key] == ["s0", "s1"]
    assert isinstance(p.propose(), Wait)  # s2 is judged against both, so it waits for them
    p.finished("s0", {"t": 0.58}, {"t": Pick("s0", 0.58, 0.001)})
    assert isinstance(p.propose(), Wait)
    p.finished("s1", {"t": 0.60}, {"t": Pick("s1", 0.60, 0.001)})
    assert p.propose().key == "s2"


def test_a_rise_smaller_than_delta_per_size_but_larger_over_two_keeps_the_search_going():
    slow = {"t": [0.600, 0.606, 0.612, 0.618, 0.624]}
    done, trained, stopped = drive(SizePolicy(SIZES, ["t"], TWO), slow, noise=0.0001)
    # s2 alone cannot gain δ = 0.01 over s1 (stopped at its rung); s3 could, and is trained.
    assert stopped[0] == "s2" and "s3" in trained


def test_skipping_ahead_pays_only_for_the_answer_on_a_ladder_that_keeps_rising():
    """Each middle size passes its rung, but the next is predicted better by more than δ for
    sure: the middle sizes stop at their first rung and only the largest is trained fully."""
    rising = {"disease": [0.50, 0.55, 0.60, 0.65, 0.70]}
    done, trained, stopped = drive(SizePolicy(SIZES, ["disease"], Settings(warmup_sizes=2, skip_ahead=True)), rising)
    assert trained == ["s0", "s1", "s4"] and stopped == ["s2", "s3"]
    assert done.answer == {"disease": "s4"}
    p = SizePolicy(SIZES, ["disease"], Settings(warmup_sizes=2, skip_ahead=True))
    for i in range(2):
        p.propose()
        p.at_rung(f"s{i}", 0.125, loss_at(i, 0.125))
        p.finished(f"s{i}", {"disease": rising["disease"][i]}, {"disease": Pick(f"s{i}", rising["disease"][i], 0.002)})
    v = p.at_rung(p.propose().key, 0.125, loss_at(2, 0.125))
    assert v.reason == "rung 1/8: skipped ahead: s3 is predicted better by more than δ = 0.01 on every task"


def test_the_defaults_train_three_sizes_before_judging_any():
    p = SizePolicy(SIZES, ["t"])
    assert [p.propose().key for _ in range(3)] == ["s0", "s1", "s2"]
    assert isinstance(p.propose(), Wait)


def test_the_secant_reads_the_last_step_forward():
    assert secant((1, 2), (0.5, 0.6), 3) == (pytest.approx(0.7), 1.0)  # one spacing on: one more step
    assert secant((1, 2), (0.5, 0.6), 2.5) == (pytest.approx(0.65), 0.5)


@pytest.mark.parametrize("bad", [dict(delta=-0.1), dict(rungs=(0.5, 0.25)), dict(rungs=(1.0,)),
                                 dict(warmup_sizes=1)])
def test_settings_refuse_what_cannot_work(bad):
    with pytest.raises(ValueError):
        Settings(**bad)
