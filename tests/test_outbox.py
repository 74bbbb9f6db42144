"""The tracking outbox under faults, on a real MLflow SQLite store: an entry the store keeps
refusing is retried a bounded number of times, set aside with its reason and never blocks the
entries after it; results kept while the server was away are delivered later by one command; a
real `mlflow server` behind a proxy that answers 503 for a while is retried, not refused."""

import dataclasses
import json
import socket
import time

import pytest

from claims_search import cli
from claims_search.search.state import SearchState
from claims_search.tracking.tracker import MAX_ATTEMPTS, Tracker
from tests.local_http import LocalServer
from tests.test_tracking import trial


def test_an_entry_the_store_keeps_refusing_is_set_aside_and_blocks_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "faulty", tmp_path / "outbox")
    # MLflow refuses a metric name it cannot store: a permanent refusal, not an outage.
    bad = dataclasses.replace(trial("t-bad", "ckd_incidence", 0.4, 10.0), extras={"bad name?*": 1.0})
    tracker.log_trial(bad, sync=False)
    tracker.log_trial(trial("t-good", "ckd_incidence", 0.5, 20.0), sync=False)
    for attempt in range(1, MAX_ATTEMPTS):
        assert tracker.sync() == 2, attempt  # kept pending, in order, while under the bound
    assert tracker.sync() == 0  # the bad one is set aside, the good one delivered
    aside = tracker.set_aside()
    assert [a["key"] for a in aside] == ["trial/ckd_incidence/t-bad"] and aside[0]["reason"]
    exp = MlflowClient(uri).get_experiment_by_name("faulty")
    runs = MlflowClient(uri).search_runs([exp.experiment_id])
    assert {r.data.tags.get("trial_id") for r in runs} >= {"t-good"}

    assert tracker.retry_set_aside() == 1  # the user fixed the cause: try again
    assert len(tracker.pending()) == 1


def test_results_kept_while_the_server_was_away_are_delivered_by_one_command(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on: the server is away
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    state = SearchState.for_search(str(tmp_path / "runs"), "away")
    state.local.mkdir(parents=True)
    (state.local / "search.json").write_text(json.dumps({"space": "x", "data": "y", "metric": "auprc",
                                                         "cost": "device_seconds"}))
    tracker = Tracker(down, "away", state.outbox)
    tracker.log_trial(trial("t0", "ckd_incidence", 0.4, 10.0))
    assert len(tracker.pending()) == 1

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the server is back (here: a store it can reach)
    code = cli.main(["sync", "--name", "away", "--storage", str(tmp_path / "runs"), "--tracking-uri", uri])
    assert code == 0
    assert "1 result(s) delivered, 0 still pending, 0 set aside" in capsys.readouterr().out
    assert Tracker(uri, "away", state.outbox).pending() == []


def test_sync_of_an_unknown_search_is_one_line(tmp_path, capsys):
    code = cli.main(["sync", "--name", "nope", "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "no search named 'nope' there" in err and len(err.strip().splitlines()) == 1


class RefusingProxy(LocalServer):
    """A real HTTP proxy in front of a real `mlflow server`, as a load balancer in front of an
    overloaded or restarting tracking server: it answers the next ``refusing`` requests whose
    path holds ``only`` with 503 (``/health`` always passes) and forwards the rest. ``refused``
    counts the refusals."""

    def __init__(self, upstream: str, only: str = "/api/"):
        import urllib.error
        import urllib.request

        self.refusing, self.refused = 0, 0

        def answer(method: str, path: str, headers: dict, body: bytes):
            if self.refusing and only in path:
                self.refusing -= 1
                self.refused += 1
                return 503, {"Content-Type": "text/plain"}, b"Service Unavailable"
            req = urllib.request.Request(upstream + path, data=body or None, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read()

        super().__init__(answer)


@pytest.fixture
def busy_server(mlflow_server):
    """The suite's `mlflow server` behind a `RefusingProxy` that refuses only run requests, so
    a refusal lands in the middle of delivering a trial (the experiment is found first)."""
    proxy = RefusingProxy(mlflow_server.url, only="/runs/")
    yield proxy
    proxy.close()


def test_a_busy_tracking_server_is_retried_and_never_costs_a_result(busy_server, tmp_path):
    """503s (a tracking server busy or restarting behind its load balancer): a brief spell is
    ridden out within one sync by MLflow's own bounded retries; a long one keeps the results
    pending, bounded in time and not counted as refusals (nothing is set aside however long it
    lasts), and the next sync once the server answers delivers them all."""
    from mlflow.tracking import MlflowClient

    proxy = busy_server
    name = f"busy-{time.time_ns()}"  # the server outlives this test
    tracker = Tracker(proxy.url, name, tmp_path / "outbox")
    tracker.log_trial(trial("t-1", "ckd_incidence", 0.5, 10.0), sync=False)
    proxy.refusing = 2  # a brief spell: two requests refused, the third answered
    assert tracker.sync() == 0 and proxy.refused == 2

    tracker.log_trial(trial("t-2", "ckd_incidence", 0.6, 20.0), sync=False)
    tracker.log_trial(trial("t-3", "ckd_incidence", 0.7, 40.0), sync=False)
    proxy.refusing = 10**6  # a long spell
    t0 = time.monotonic()
    assert tracker.sync() == 2
    assert time.monotonic() - t0 < 30  # 2 retries with backoff: seconds, not MLflow's default minutes
    assert not (tmp_path / "outbox" / "failed.jsonl").exists()  # busy is not a refusal of the entry

    proxy.refusing = 0
    assert tracker.sync() == 0 and tracker.set_aside() == []
    client = MlflowClient(proxy.url)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert {r.data.tags.get("trial_id") for r in runs} >= {"t-1", "t-2", "t-3"}
