"""The MLflow edge (the only module that imports mlflow), built around an on-disk outbox.

Layout in MLflow: one experiment per search; a parent run per task (tags ``claims_search.role
= parent``, ``claims_search.task``); under it a child run per trial (params: width, depth,
heads, n_params, training settings; metrics: the primary metric with ``_low``/``_high``, cost,
pretrain_cost, finetune_cost and the record's aggregate extras; tags: ``trial_id``, ``status``,
``pareto=true/false``, ``recommended=true|false``). Each parent run holds the frontier as
``frontier.csv``/``frontier.json``, ``recommendation.json``, ``frontier.png`` and
``frontier.html``. The recommended model of each task is registered as
``<experiment>-<task>`` with the alias ``recommended``.

Resilience: every result is first appended to ``<outbox_dir>/outbox.jsonl``; :meth:`Tracker.sync`
pushes pending entries and notes each delivery in ``sent.jsonl``. Pushing is idempotent (runs
are found by their ``trial_id`` tag, never duplicated), so a crash between a push and its note
is harmless. An unreachable server never raises to the caller: entries stay pending and the
next ``sync()`` delivers them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

from claims_search.errors import ClaimsSearchError
from claims_search.results.frontier import TrialRecord
from claims_search.tracking.sqlite_store import SCRATCH, finish_cut_migration, path_of

log = logging.getLogger(__name__)

ROLE, TASK, RECORD = "claims_search.role", "claims_search.task", "claims_search.record"
MAX_ATTEMPTS = 3  # pushes of one entry that a reachable server refused before it is set aside
_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}

# Models-from-code file for the registered pyfunc: no pickled classes, only the checkpoint folder.
def ui_url(base: str, experiment_id: str | None = None) -> str:
    """The MLflow UI address of an experiment (or of the experiment list) in its model-training
    view: MLflow 3 opens experiments in a GenAI overview unless told ``workflowType``."""
    path = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"{base.rstrip('/')}/#/{path}?workflowType=machine_learning"


def experiment_url(tracking_uri: str, name: str) -> str | None:
    """:func:`ui_url` of search ``name`` on an ``http(s)`` tracking server; None otherwise."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        exp = _client(tracking_uri).get_experiment_by_name(name)
    except Exception:  # noqa: BLE001 - a link is a courtesy; the server may be away
        return None
    return ui_url(tracking_uri, exp.experiment_id) if exp else None


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _client(uri: str):
    """A client of the store at ``uri``; a local SQLite store left half-migrated by a killed
    process is finished first (``sqlite_store``) rather than refused for good."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as e:  # noqa: BLE001 - MLflow wraps SQLAlchemy's errors in several types
        if SCRATCH not in str(e) or not finish_cut_migration(uri):
            raise
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# Stores MLflow can track to (``databricks`` and the SQL dialects through SQLAlchemy).
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def check_uri(uri: str) -> None:
    """One line for a tracking URI MLflow cannot use: an unknown scheme, or a SQLite database in
    a folder that does not exist (MLflow would fail later, or deep inside SQLAlchemy)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"
    if scheme not in SCHEMES:
        raise ClaimsSearchError(f"{uri}: not a tracking URI MLflow can use (scheme {scheme!r}; "
                                f"use one of {', '.join(s + '://' for s in SCHEMES)})")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).parent.is_dir():
        raise ClaimsSearchError(f"{uri}: folder {Path(uri[len('sqlite:///'):]).parent} does not exist")


# What a busy or restarting server (or the proxy in front of it) answers: MLflow's client retries
# these itself (MLFLOW_HTTP_REQUEST_MAX_RETRIES, backoff), then raises with the code in its text.
_TRANSIENT = re.compile(r"too many (408|429|502|503|504) error responses|error code (408|429|502|503|504)\b")


def transient(e: BaseException) -> str | None:
    """The HTTP status of a transient refusal (``"503"``), or None for any other failure."""
    m = _TRANSIENT.search(str(e))
    return m and (m.group(1) or m.group(2))


def reachable(uri: str) -> bool:
    """Quick check, so an unreachable server costs seconds rather than MLflow's retries."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            return requests.get(uri.rstrip("/") + "/health", timeout=3).ok
        except requests.RequestException:
            return False
    return True


def _artifact_location(uri: str, name: str) -> str | None:
    # Keep a SQLite store's artifacts beside the database, not in whatever the cwd is.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).resolve().as_uri()
    return None


def _experiment_id(client, uri: str, name: str, create: bool = True) -> str | None:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    return client.create_experiment(name, artifact_location=_artifact_location(uri, name))


def _q(value: str) -> str:
    return str(value).replace("'", "\\'")


def _find(client, exp_id: str, tags: dict[str, str]):
    flt = " and ".join(f"tags.`{k}` = '{_q(v)}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], flt, max_results=2, order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def _params(record: TrialRecord) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"[:250]] = str(v)[:6000]

    params = dict(record.params)
    walk(params.pop("model", {}) if isinstance(params.get("model"), dict) else {}, "")
    walk(params, "")
    if record.n_params is not None:
        out["n_params"] = str(record.n_params)
    return out


def _metrics(record: TrialRecord, metric: str) -> dict[str, float]:
    values = {
        metric: record.metric,
        f"{metric}_low": record.metric_low,
        f"{metric}_high": record.metric_high,
        "cost": record.cost,
        "pretrain_cost": record.pretrain_cost,
        "finetune_cost": record.finetune_cost,
        **{k: v for k, v in record.extras.items()},
    }
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}


def _record_tag(r: TrialRecord) -> str:
    """The record as JSON for a run tag (MLflow caps tags at 8,000 characters): without its
    extras if too long, never a cut-off, unreadable string."""
    text = json.dumps(r.to_dict(), sort_keys=True, default=str)
    if len(text) > 7900:
        text = json.dumps({**r.to_dict(), "extras": {}}, sort_keys=True, default=str)
    return text


def registered_name(experiment: str, task: str) -> str:
    """Model Registry name of a task's recommended model."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{experiment}-{task}")


class Tracker:
    """Outbox-first MLflow tracking for one search (see the module docstring).

    ``metric`` and ``cost`` name what a record's ``metric`` and ``cost`` measure (the space's
    ``metric`` and ``cost``); they become the MLflow metric names' stem and experiment tags.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        outbox_dir: str | os.PathLike,
        metric: str = "auprc",
        cost: str = "device_seconds",
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.outbox_dir = Path(outbox_dir)
        self.metric, self.cost = metric, cost
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        # A server that dies mid-sync should cost seconds, not MLflow's default minutes of
        # retries: the outbox keeps what was not delivered. A user's own setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # MLflow prints "View run ... at" for every run ended on a server (and asks the server
        # for the run to do so): the search prints its experiment's link once, at the end.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._outbox = self.outbox_dir / "outbox.jsonl"
        self._sent = self.outbox_dir / "sent.jsonl"
        self._failed = self.outbox_dir / "failed.jsonl"  # one line per failed push: (key, hash, reason)
        self._set_aside = self.outbox_dir / "set_aside.jsonl"

    # ---- the outbox ---------------------------------------------------------------------------
    def _append(self, path: Path, entry: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _read(self, path: Path) -> list[dict]:
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a torn line (a crash mid-write)", path)
        return out

    def _entries(self) -> dict[str, dict]:
        latest: dict[str, dict] = {}
        for e in self._read(self._outbox):  # later entries for one key replace earlier ones
            latest.pop(e["key"], None)
            latest[e["key"]] = e
        return latest

    def put(self, kind: str, key: str, payload: dict) -> None:
        """Append an entry to the outbox (nothing is sent until :meth:`sync`)."""
        body = json.dumps(payload, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{kind}|{key}|{body}".encode()).hexdigest()[:16]
        self._append(self._outbox, {"kind": kind, "key": key, "hash": digest, "payload": json.loads(body)})

    def open_store(self) -> None:
        """Build a local SQLite store's schema now, before any trial runs. MLflow builds it on
        first use; left to the first result, that build runs while trials do, and a Ray failure
        that ends the search can cut it half-way (``sqlite_store`` mends that, later). A store
        that cannot be opened only logs: the outbox keeps every result until ``sync``."""
        if path_of(self.tracking_uri) is None:
            return
        try:
            _client(self.tracking_uri).search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - the outbox is the record; MLflow is told later
            log.warning("MLflow store %s could not be opened yet (%s): results stay in %s until it can",
                        self.tracking_uri, e, self._outbox)

    def pending(self) -> list[dict]:
        """Outbox entries not yet delivered (nor set aside), oldest first."""
        done = {(e["key"], e["hash"]) for e in self._read(self._sent) + self._read(self._set_aside)}
        return [e for e in self._entries().values() if (e["key"], e["hash"]) not in done]

    def set_aside(self) -> list[dict]:
        """Entries that failed ``MAX_ATTEMPTS`` times against a reachable server, with the reason
        of their last failure (``claims-search sync --retry-set-aside`` tries them again)."""
        return self._read(self._set_aside)

    def records(self) -> list[TrialRecord]:
        """Every trial record in the outbox (delivered or not), latest per (task, trial)."""
        return [TrialRecord.from_dict(e["payload"]) for e in self._entries().values() if e["kind"] == "trial"]

    # ---- what callers log ------------------------------------------------------------------
    def log_trial(self, record: TrialRecord, sync: bool = True) -> None:
        """Record one trial's result on one task: outbox first, then a best-effort sync."""
        self.put("trial", f"trial/{record.task}/{record.trial_id}", record.to_dict())
        if sync:
            self.sync()

    def publish(
        self,
        summaries: Mapping[str, Any] | None = None,
        settings: Any = None,
        *,
        tolerance: float | None = None,
        reference: tuple[float, float] | None = None,
        min_gain_per_doubling: float = 0.005,
        margin: float | None = None,
        sync: bool = True,
    ) -> dict[str, Any]:
        """Queue the search's settings and each task's summary for MLflow; returns
        ``{task: Recommendation | None}``.

        ``summaries`` is what ``summary.summarize`` computed (frontier, recommendation,
        hypervolume, artifacts written under ``<outbox_dir>/artifacts/<task>/`` by the caller),
        ``settings`` the ``summary.SummarySettings`` used (default: those of the summaries).
        Called with no summaries (older callers), it summarizes the outbox's own records with
        the keyword settings.
        """
        from claims_search.results.summary import SummarySettings, summarize

        if summaries is None:
            settings = settings or SummarySettings(
                metric=self.metric, cost=self.cost, margin=margin, tolerance=tolerance,
                reference=tuple(reference) if reference else None, min_gain_per_doubling=min_gain_per_doubling)
            summaries = summarize(self.records(), None, settings, self.outbox_dir / "artifacts")
        if settings is None:  # one search, one set of settings: the summaries carry them
            settings = next((s.settings for s in summaries.values()), None) or SummarySettings(
                metric=self.metric, cost=self.cost)
        self.put("settings", "settings", settings.to_dict())
        for task in sorted(summaries):
            self.put("summary", f"summary/{task}", summaries[task].payload())
        if sync:
            self.sync()
        return {task: summaries[task].recommendation for task in sorted(summaries)}

    def log_confirmation(self, task: str, split: str, roles: dict[str, dict]) -> None:
        """Queue the held-out scores of a task's recommended, best and baseline models
        (``{role: {"trial_id", "metrics" | "error"}}``: aggregates only) for its parent run."""
        self.put("confirmation", f"confirmation/{task}", {"task": task, "split": split, "roles": roles})

    # ---- delivery ----------------------------------------------------------------------------
    def sync(self) -> int:
        """Push pending entries to MLflow; return how many are still pending. Never raises for
        an unreachable or failing server: what was not delivered stays in the outbox."""
        todo = self.pending()
        if not todo:
            return 0
        if not reachable(self.tracking_uri):
            log.warning("MLflow at %s unreachable: %d result(s) kept in %s", self.tracking_uri, len(todo), self._outbox)
            return len(todo)
        try:
            client = _client(self.tracking_uri)
            exp_id = _experiment_id(client, self.tracking_uri, self.experiment_name)
            client.set_experiment_tag(exp_id, "claims_search.metric", self.metric)
            client.set_experiment_tag(exp_id, "claims_search.cost", self.cost)
            # MLflow 3's UI opens an experiment by its kind: model training, not GenAI traces.
            client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        except Exception as e:  # noqa: BLE001 - any server failure means "try again later"
            log.warning("MLflow at %s failed (%s): %d result(s) kept pending", self.tracking_uri, e, len(todo))
            return len(todo)
        done = 0
        for entry in todo:
            try:
                if entry["kind"] == "trial":
                    self._push_trial(client, exp_id, TrialRecord.from_dict(entry["payload"]))
                elif entry["kind"] == "settings":
                    for k, v in entry["payload"].items():
                        client.set_experiment_tag(exp_id, f"claims_search.{k}", json.dumps(v))
                elif entry["kind"] == "summary":
                    self._push_summary(client, exp_id, entry["payload"])
                elif entry["kind"] == "confirmation":
                    self._push_confirmation(client, exp_id, entry["payload"])
            except Exception as e:  # noqa: BLE001
                if not reachable(self.tracking_uri):  # it went away mid-sync: an outage, not a refusal
                    log.warning("MLflow at %s went away during a sync (%s): %d result(s) kept pending",
                                self.tracking_uri, e, len(todo) - done)
                    break
                if transient(e):  # busy, not refusing this entry: the next sync tries again
                    log.warning("MLflow at %s answers %s after MLflow's own retries: %d result(s) kept pending",
                                self.tracking_uri, transient(e), len(todo) - done)
                    break
                if self._give_up(entry, e):
                    done += 1
                    continue  # set aside: it never blocks the entries after it
                log.warning("MLflow push of %s failed (%s); kept pending", entry["key"], e)
                break  # keep order: summaries come after the trials they tag
            self._append(self._sent, {"key": entry["key"], "hash": entry["hash"]})
            done += 1
        return len(todo) - done

    def _give_up(self, entry: dict, error: Exception) -> bool:
        """Count a failed push of ``entry`` (the server answered: not an outage); after
        ``MAX_ATTEMPTS`` failures set it aside with its reason. True when set aside."""
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:500]
        self._append(self._failed, {"key": entry["key"], "hash": entry["hash"], "reason": reason})
        tries = sum(f["key"] == entry["key"] and f["hash"] == entry["hash"] for f in self._read(self._failed))
        if tries < MAX_ATTEMPTS:
            return False
        self._append(self._set_aside, {"key": entry["key"], "hash": entry["hash"], "reason": reason})
        log.warning("MLflow push of %s failed %d times (%s); set aside in %s", entry["key"], tries, reason,
                    self._set_aside)
        return True

    def retry_set_aside(self) -> int:
        """Forget the set-aside entries and their failures, so the next :meth:`sync` tries them
        again; how many there were."""
        n = len(self.set_aside())
        for f in (self._set_aside, self._failed):
            f.unlink(missing_ok=True)
        return n

    def _parent(self, client, exp_id: str, task: str) -> str:
        run = _find(client, exp_id, {ROLE: "parent", TASK: task})
        if run is not None:
            return run.info.run_id
        return client.create_run(exp_id, run_name=task, tags={ROLE: "parent", TASK: task}).info.run_id

    def _push_trial(self, client, exp_id: str, r: TrialRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        parent = self._parent(client, exp_id, r.task)
        tags = {
            "trial_id": str(r.trial_id),
            "status": r.status,
            "baseline": str(r.is_baseline).lower(),
            RECORD: _record_tag(r),
            **{f"claims_search.{k}": v[:5000] for k, v in r.tags.items()},
        }
        run = _find(client, exp_id, {ROLE: "trial", TASK: r.task, "trial_id": str(r.trial_id)})
        if run is None:
            name = "baseline" if r.is_baseline else _size_name(r) or str(r.trial_id)
            run_id = client.create_run(
                exp_id,
                run_name=f"{r.task}/{name}",
                tags={"mlflow.parentRunId": parent, ROLE: "trial", TASK: r.task, "pareto": "false", **tags},
            ).info.run_id
            params = [Param(k, v) for k, v in _params(r).items()]
        else:
            # Params are immutable: log only those the run lacks (a trial first recorded as
            # failed, with no config, then finished on --resume).
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in _params(r).items() if k not in run.data.params]
        metrics = [Metric(k, v, 0, 0) for k, v in _metrics(r, self.metric).items()]
        client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run_id, _STATUS[r.status])

    def _push_summary(self, client, exp_id: str, s: dict) -> None:
        from mlflow.entities import Metric, RunTag

        task = s["task"]
        parent = self._parent(client, exp_id, task)
        pareto, chosen = set(s["pareto"]), s["recommended"]
        children = client.search_runs([exp_id], f"tags.`{ROLE}` = 'trial' and tags.`{TASK}` = '{_q(task)}'", max_results=10000)
        for run in children:
            tid = run.data.tags.get("trial_id")
            client.log_batch(
                run.info.run_id,
                tags=[RunTag("pareto", str(tid in pareto).lower()), RunTag("recommended", str(tid == chosen).lower())],
            )
        metrics = {"hypervolume": s["hypervolume"], "n_trials": s["n_trials"],
                   "n_failed": s.get("n_failed", 0), "n_pruned": s.get("n_pruned", 0)}
        rec = s.get("recommendation") or {}
        if rec:
            metrics.update(
                {
                    f"recommended_{self.metric}": rec["recommended"]["metric"],
                    "recommended_cost": rec["recommended"]["cost"],
                    "compute_saved": rec["compute_saved"],
                    "compute_saved_factor": rec["compute_saved_factor"],
                    # the share of bootstrap seeds that agree with the recommendation (None: not judged)
                    "recommendation_agreement": rec.get("agreement"),
                }
            )
        client.log_batch(
            parent,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items() if v is not None and v == v and abs(v) != float("inf")],
            tags=[RunTag("recommended_trial", str(chosen)), RunTag("tolerance", str(s["tolerance"]))],
        )
        client.log_artifacts(parent, s["artifacts"])
        if chosen is not None and s.get("checkpoint"):
            child = next((c for c in children if c.data.tags.get("trial_id") == chosen), None)
            if child is not None:
                try:
                    self._register(client, task, chosen, child.info.run_id, s["checkpoint"])
                except ClaimsSearchError as e:  # a lost checkpoint must not block every later sync
                    log.warning("%s: recommended model not registered: %s", task, e)
        client.set_terminated(parent, "FINISHED")

    def _push_confirmation(self, client, exp_id: str, c: dict) -> None:
        """Held-out metrics on the task's parent run: ``held_out_<role>_<metric>[_low|_high]``,
        meds-evaluation's figures among them (``held_out_<role>_meds_samples_roc_auc_score``, ...;
        a NaN one, undefined on that draw, is left out)."""
        from mlflow.entities import Metric, RunTag

        parent = self._parent(client, exp_id, c["task"])
        metrics, tags = [], []
        for role, got in c["roles"].items():
            tags.append(RunTag(f"{c['split']}_{role}_trial", str(got["trial_id"])))
            if "error" in got:
                tags.append(RunTag(f"{c['split']}_{role}_error", got["error"][:5000]))
                continue
            for k, v in got["metrics"].items():
                if isinstance(v, (int, float)) and v == v:
                    metrics.append(Metric(f"{c['split']}_{role}_{k}", float(v), 0, 0))
        client.log_batch(parent, metrics=metrics, tags=tags)

    def _register(self, client, task: str, trial_id: str, run_id: str, checkpoint: str) -> None:
        """Register the recommended checkpoint (once per trial) and point ``recommended`` at it."""
        name = registered_name(self.experiment_name, task)
        if not client.search_registered_models(f"name = '{_q(name)}'"):
            client.create_registered_model(name, tags={TASK: task})
        versions = client.search_model_versions(f"name = '{_q(name)}' and tag.trial_id = '{_q(trial_id)}'")
        if versions:
            version = versions[0].version
        else:
            from claims_search.storage import localize

            from claims_search.tracking.packaging import save_model

            checkpoint = str(localize(checkpoint))  # a local copy when it lives on s3:// or gs://
            if not Path(checkpoint).is_dir():
                raise ClaimsSearchError(f"{checkpoint}: recommended checkpoint folder not found")
            with tempfile.TemporaryDirectory() as tmp:
                save_model(checkpoint, Path(tmp) / "model")  # a pyfunc, or LightGBM's own flavour
                client.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
            version = client.create_model_version(
                name, f"runs:/{run_id}/model", run_id=run_id, tags={"trial_id": trial_id, TASK: task}
            ).version
        client.set_registered_model_alias(name, "recommended", version)


def _size_name(r: TrialRecord) -> str | None:
    m = r.model
    if {"width", "depth", "heads"} <= set(m):
        return f"w{m['width']}-d{m['depth']}-h{m['heads']}"
    return None


def _existing_client(tracking_uri: str):
    """A client for a store that must already exist: reading never creates an empty database."""
    check_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise ClaimsSearchError(f"{tracking_uri}: no MLflow database there (run `claims-search search` first?)")
    if not reachable(tracking_uri):
        raise ClaimsSearchError(f"{tracking_uri}: MLflow tracking server unreachable")
    return _client(tracking_uri)


def load_records(tracking_uri: str, experiment_name: str) -> list[TrialRecord]:
    """Every trial record of a search, read back from MLflow (for `frontier` / `recommend`)."""
    client = _existing_client(tracking_uri)
    exp_id = _experiment_id(client, tracking_uri, experiment_name, create=False)
    if exp_id is None:
        raise ClaimsSearchError(f"{tracking_uri}: experiment {experiment_name!r} not found")
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.`{ROLE}` = 'trial'", max_results=1000, page_token=token)
        out += [TrialRecord.from_dict(json.loads(r.data.tags[RECORD])) for r in page if RECORD in r.data.tags]
        token = page.token
        if not token:
            return sorted(out, key=lambda r: (r.task, str(r.trial_id)))


def load_settings(tracking_uri: str, experiment_name: str) -> dict[str, Any]:
    """The search's settings stored as experiment tags: ``metric``, ``cost`` (names) and, once
    published, ``tolerance``, ``min_gain_per_doubling`` and the hypervolume ``reference``."""
    client = _existing_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise ClaimsSearchError(f"{tracking_uri}: experiment {experiment_name!r} not found")
    out: dict[str, Any] = {
        "metric": "auprc", "cost": "device_seconds", "tolerance": None,
        "min_gain_per_doubling": 0.005, "reference": None,
    }
    for k, v in exp.tags.items():
        if k.startswith("claims_search."):
            k = k.removeprefix("claims_search.")
            out[k] = v if k in ("metric", "cost") else json.loads(v)
    return out


def load_confirmation(tracking_uri: str, experiment_name: str, split: str = "held_out") -> dict[str, dict]:
    """The held-out confirmation each task's parent run holds, in the shape the search made it:
    ``{task: {role: {"trial_id", "metrics"} | {"trial_id", "error"}}}``; a task whose search
    stopped before confirming is absent. Aggregates only (metrics, intervals, sample counts,
    meds-evaluation's figures: ``meds_metrics.flat``'s names)."""
    client = _existing_client(tracking_uri)
    exp_id = _experiment_id(client, tracking_uri, experiment_name, create=False)
    if exp_id is None:
        raise ClaimsSearchError(f"{tracking_uri}: experiment {experiment_name!r} not found")
    out: dict[str, dict] = {}
    for run in client.search_runs([exp_id], f"tags.`{ROLE}` = 'parent'", max_results=1000):
        tags, metrics = run.data.tags, run.data.metrics
        roles = {}
        for role in ("recommended", "best", "baseline"):
            trial = tags.get(f"{split}_{role}_trial")
            if trial is None:
                continue
            if f"{split}_{role}_error" in tags:
                roles[role] = {"trial_id": trial, "error": tags[f"{split}_{role}_error"]}
                continue
            prefix = f"{split}_{role}_"
            roles[role] = {"trial_id": trial,
                           "metrics": {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}}
        if roles and TASK in tags:
            out[tags[TASK]] = roles
    return out
