"""Task labels: load an ACES task config (built-in name or file) and extract MEDS labels.

Tasks are ACES configs (predicates, a trigger, windows, one label window), the MEDS
ecosystem's task language. ``prediction_time`` is inclusive: data at or before it may be used.
Labels are MEDS label tables: ``subject_id int64, prediction_time timestamp[us],
boolean_value bool``. Extraction runs shard by shard (a subject lives in one shard), and ACES
within a shard on slices of at most ``SLICE_SUBJECTS`` subjects, so ACES's memory is bounded by
a slice.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

import polars as pl

from claims_search import named
from claims_search.errors import ClaimsSearchError
from claims_search.data.task import Task

log = logging.getLogger(__name__)

BUILTIN_TASKS = ("ckd_incidence", "antihypertensive_start")
LABEL_SCHEMA = {
    "subject_id": pl.Int64,
    "prediction_time": pl.Datetime("us"),
    "boolean_value": pl.Boolean,
}


def load_source(source: str | Path) -> Task:
    """The task a ``Task.source`` names: a MEDS label table (a .parquet file or a folder), else
    an ACES config file or a built-in task name."""
    from claims_search.data import label_tables

    if label_tables.is_table_source(source):
        return label_tables.load(source)
    return load_task(source)


def task_path(name_or_path: str | Path) -> Path:
    """``name_or_path`` when it is a file, else the YAML of a built-in task name or of a task of
    the synthetic complexity family (``complexity_k0`` ... ``k3``, prepared only when named)."""
    name = str(name_or_path)
    shipped = None
    if name in BUILTIN_TASKS:
        shipped = Path(str(files("claims_search.data").joinpath(f"tasks/{name}.yaml")))
    elif "/" not in name:  # the synthetic complexity family: named, never implied
        shipped = Path(str(files("claims_search.data").joinpath(f"tasks/complexity/{name}.yaml")))
    path = named.resolve(name, shipped, "task")  # a file of that name wins, with a note
    if path is None:
        raise ClaimsSearchError(
            f"{name}: no such task file or built-in task ({', '.join(BUILTIN_TASKS)})"
        )
    return path


def load_task(name_or_path: str | Path) -> Task:
    """Load and validate an ACES task config; ACES's own errors become one line naming the file."""
    from aces import config  # heavy (hydra, polars): only when tasks are used

    path = task_path(name_or_path)
    text = _read_text(path)
    _check_shape(path, text)
    split = _flow_style_split(text)
    if split:
        raise ClaimsSearchError(f"{path}: {split}")
    # ACES logs every step at INFO and warns about odd windows (which we reject below, in our
    # words): keep its warnings until the config passed our checks.
    aces_log = logging.getLogger("aces")
    held = _Held()
    aces_log.setLevel(logging.WARNING)
    aces_log.addHandler(held)
    propagate, aces_log.propagate = aces_log.propagate, False
    try:
        cfg = config.TaskExtractorConfig.load(config_path=path)
    except Exception as e:  # ACES raises ValueError, KeyError, TypeError, yaml errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClaimsSearchError(f"{path}: invalid ACES task config: {first}") from None
    finally:
        aces_log.removeHandler(held)
        aces_log.propagate = propagate
    label_windows = [n for n, w in cfg.windows.items() if w.label is not None]
    if len(label_windows) != 1:
        raise ClaimsSearchError(f"{path}: windows: need exactly one window with 'label'")
    if not any(w.index_timestamp for w in cfg.windows.values()):
        raise ClaimsSearchError(
            f"{path}: windows: need an 'index_timestamp' (the prediction time) on one window"
        )
    _check_windows_and_regexes(path, cfg)
    for record in held.records:
        aces_log.handle(record)
    return Task(path.stem, str(path), text, cfg)


class _Held(logging.Handler):
    """Keeps log records instead of printing them."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _read_text(path: Path) -> str:
    """The task file's text; one line when it is not UTF-8 (a binary file, a legacy encoding)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ClaimsSearchError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                                "save the task file as UTF-8") from None


def _check_shape(path: Path, text: str) -> None:
    """YAML syntax and the three top-level keys, said plainly (ACES says 'pop expected ...')."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ClaimsSearchError(f"{path}: not valid YAML: {problem}{where}") from None
    if data is None:
        raise ClaimsSearchError(f"{path}: empty task file; an ACES task has predicates, trigger "
                                "and windows")
    if not isinstance(data, dict):
        raise ClaimsSearchError(f"{path}: an ACES task is a mapping with predicates, trigger and "
                                f"windows, not a {type(data).__name__}")
    missing = [k for k in ("predicates", "trigger", "windows") if k not in data]
    if missing:
        raise ClaimsSearchError(f"{path}: missing {', '.join(repr(k) for k in missing)}; an ACES "
                                "task has predicates, trigger and windows")


def _check_windows_and_regexes(path: Path, cfg) -> None:
    """Windows that can hold no event and code regexes that do not compile, which ACES only
    finds (in words nobody can act on) when it runs on the data."""
    import datetime as dt

    for name, w in cfg.windows.items():
        # One bound is the window's root, the other an offset from it; ACES leaves the offset's
        # expression None when the offset is zero ("start + 0d").
        expr, text = ((w.end_endpoint_expr, w.end) if w.root_node == "start"
                      else (w.start_endpoint_expr, w.start))
        size = getattr(expr, "window_size", None)
        if expr is None or size == dt.timedelta(0):
            raise ClaimsSearchError(
                f"{path}: windows.{name}: '{text}' makes a window of zero length, which holds "
                "no event; give it a length, e.g. start + 30d")
    for name, p in cfg.plain_predicates.items():
        regex = p.code.get("regex") if isinstance(p.code, dict) else None
        if regex is None:
            continue
        try:
            pl.select(pl.lit("").str.contains(str(regex)))
        except pl.exceptions.PolarsError as e:
            why = next((x.strip() for x in str(e).splitlines() if x.startswith("error:")),
                       str(e).splitlines()[0])
            raise ClaimsSearchError(
                f"{path}: predicates.{name}: code regex {regex!r} does not compile ({why})"
            ) from None


def _flow_style_split(text: str) -> str | None:
    """A hint when a window's ``has`` constraint was cut in two by YAML's flow style.

    ``has: {ckd: (None, 0)}`` is a YAML flow mapping, and YAML splits it at the comma into
    ``ckd: "(None"`` and ``"0)": null``; ACES then rejects ``(None``. Returns one line saying so
    and how to write it, or None when no constraint looks split (or the YAML does not parse:
    ACES reports that).
    """
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    windows = data.get("windows") if isinstance(data, dict) else None
    if not isinstance(windows, dict):
        return None
    for name, w in windows.items():
        has = w.get("has") if isinstance(w, dict) else None
        if not isinstance(has, dict):
            continue
        items = list(has.items())
        for i, (pred, bound) in enumerate(items):
            if isinstance(bound, str) and bound.count("(") > bound.count(")"):
                rest = items[i + 1][0] if i + 1 < len(items) else "..."
                whole = f"{bound.strip()}, {str(rest).strip()}"
                return (f"windows.{name}.has: the constraint '{pred}: {whole}' was split at its "
                        f"comma by YAML's flow style {{...}} (ACES got {bound.strip()!r}); quote it, "
                        f"has: {{{pred}: \"{whole}\"}}, or use block style: 'has:' on its own line, "
                        f"then '{pred}: {whole}' indented below it")
    return None


# Subjects handed to ACES at a time (see extract_shard); labels are per subject, so any size
# gives the same labels.
SLICE_SUBJECTS = 5_000


def extract_shard(task: Task, shard: Path, df: pl.DataFrame | None = None,
                  slice_subjects: int | None = SLICE_SUBJECTS) -> pl.DataFrame:
    """MEDS labels of one task on one MEDS shard (subject_id, prediction_time, boolean_value).

    ``df``: the shard's rows if already read (subject_id, time, code, numeric_value). When the
    task's result cannot depend on rows that match none of its predicates (see
    :func:`_rows_outside_predicates_matter`), ACES runs on the matching rows only: the same
    labels, several times faster on claims, where most rows match nothing.

    ACES runs on slices of at most ``slice_subjects`` subjects (None: the whole shard at once),
    a subject never split between slices: ACES's labels are per subject, so they are the same,
    and its working tables are a slice's, not a shard's.

    Memory (2026-12-02): ACES looks up an optional key of its data config with ``getattr``,
    which on an omegaconf DictConfig raises and catches an exception; that exception's
    traceback frames form a reference cycle that kept this function's frame, and with it the
    shard's rows and ACES's tables, alive until Python's occasional full garbage collection.
    A worker's memory crept up by ~120 MiB a shard that way (1.2-1.9 GiB at 2.3 M patients).
    The key is now given (``shard: False``): nothing of a call is left for the collector.
    """
    import tempfile

    if task.table is not None:  # a precomputed label table: its rows of this shard's subjects
        from claims_search.data.label_tables import shard_labels

        return shard_labels(task, shard, df)
    # ACES logs every step, and warns when one shard happens to hold one class only.
    logging.getLogger("aces").setLevel(logging.ERROR)
    rows = None  # what ACES reads: a polars frame, a pyarrow table, or the shard file itself
    if not _rows_outside_predicates_matter(task.config):
        if df is None:
            df = pl.read_parquet(shard, columns=["subject_id", "time", "code", "numeric_value"])
        keep = pl.any_horizontal(
            [p.MEDS_eval_expr() for p in task.config.plain_predicates.values()])
        try:
            rows = df.select("subject_id", "time", "code", "numeric_value").filter(keep)
        except pl.exceptions.PolarsError:  # a predicate on a column we did not read
            rows = None
    del df  # the caller's frame still holds it; this one must not outlive the call with it
    if rows is None and slice_subjects:
        import pyarrow.parquet as pq

        rows = pq.read_table(shard)  # every column, as ACES would read it
    parts = []
    with tempfile.TemporaryDirectory(prefix="claims-search-aces-") as tmp:
        for part in _subject_slices(rows, slice_subjects):
            path = shard
            if part is not None:
                path = Path(tmp) / shard.name
                if isinstance(part, pl.DataFrame):
                    part.write_parquet(path)
                else:
                    import pyarrow.parquet as pq

                    pq.write_table(part, path)
            del part
            parts.append(_run_aces(task, shard, path))
    del rows
    parts = [p for p in parts if len(p)]
    if not parts:
        return pl.DataFrame(schema=LABEL_SCHEMA)
    return pl.concat(parts) if len(parts) > 1 else parts[0]


def _subject_slices(rows, n: int | None):
    """``rows`` (a polars frame or pyarrow table of a shard, or None) in slices of at most
    ``n`` subjects (by subject id; a subject's rows all in one slice, in their order). One
    slice when ``rows`` is None, ``n`` is None or ``rows`` holds at most ``n`` subjects: the
    frame itself, or None for a table (ACES then reads the shard file as it is)."""
    import numpy as np

    if rows is None or not n:
        yield rows
        return
    ids = np.asarray(rows["subject_id"].to_numpy())
    uniq, inv = np.unique(ids, return_inverse=True)
    if len(uniq) <= n:
        yield rows if isinstance(rows, pl.DataFrame) else None  # None: ACES reads the file
        return
    which = inv // n
    for k in range(int(which.max()) + 1):
        mask = which == k
        if isinstance(rows, pl.DataFrame):
            yield rows.filter(pl.Series(mask))
        else:
            import pyarrow as pa

            yield rows.filter(pa.array(mask))


def _run_aces(task: Task, shard: Path, path: Path) -> pl.DataFrame:
    """ACES's labels of ``task`` on the MEDS file ``path`` (rows of ``shard``), as a label table."""
    from aces import predicates, query
    from omegaconf import DictConfig

    # "shard": ACES reads it with getattr(..., False); a missing key raises inside omegaconf.
    data = DictConfig({"path": str(path), "standard": "meds", "shard": False})
    try:
        pdf = predicates.get_predicates_df(task.config, data)
        result = query.query(task.config, pdf)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClaimsSearchError(f"{task.source}: ACES failed on {shard}: {first}") from None
    del pdf
    if len(result) == 0:
        return pl.DataFrame(schema=LABEL_SCHEMA)
    # ACES's `label` counts label-predicate events in the label window; any count is positive.
    return result.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("index_timestamp").cast(pl.Datetime("us")).alias("prediction_time"),
        (pl.col("label") > 0).alias("boolean_value"),
    )


def _rows_outside_predicates_matter(cfg) -> bool:
    """Whether rows matching no predicate can change ACES's result for ``cfg``.

    They can when the config uses the special predicates (any event, start or end of record),
    static predicates (ACES reads them from each subject's first row), or takes the prediction
    time from an open window boundary (the first or last event of the record).
    """
    from aces.types import ANY_EVENT_COLUMN, END_OF_RECORD_KEY, START_OF_RECORD_KEY

    special = {ANY_EVENT_COLUMN, START_OF_RECORD_KEY, END_OF_RECORD_KEY}
    if cfg.trigger.predicate in special:
        return True
    if any(p.static for p in cfg.plain_predicates.values()):
        return True
    for w in cfg.windows.values():
        if special & (set(w.referenced_predicates) | set(w.constraint_predicates)):
            return True
        if (w.index_timestamp == "start" and w.start is None) or (
            w.index_timestamp == "end" and w.end is None
        ):
            return True
    return False


def extract(task: Task, shards: list[Path]) -> pl.DataFrame:
    """MEDS labels of ``task`` over all ``shards``, checked to have both classes."""
    parts = [extract_shard(task, s) for s in shards]
    labels = pl.concat(parts) if parts else pl.DataFrame(schema=LABEL_SCHEMA)
    check_both_classes(task, labels, codes=lambda: shard_codes(shards))
    return labels


def shard_codes(shards: list[Path]) -> set[str]:
    """The distinct codes of MEDS shards (read one column at a time)."""
    out: set[str] = set()
    for s in shards:
        out.update(pl.read_parquet(s, columns=["code"])["code"].drop_nulls().unique().to_list())
    return out


def check_both_classes(task: Task, labels: pl.DataFrame, codes=None) -> None:
    """A task with no positive or no negative labels cannot be learned or scored.

    ``codes``: the distinct codes of the dataset (a set, or a function returning one), used to
    name the predicate that matched no event and the codes closest to it.
    """
    pos = int(labels["boolean_value"].sum()) if len(labels) else 0
    if pos == 0 or pos == len(labels):
        kind = "positive" if pos == 0 else "negative"
        why = ""
        if pos == 0 and codes is not None and task.config is not None:
            why = unmatched_hint(task, codes() if callable(codes) else codes,
                                 samples=len(labels) > 0)
        raise ClaimsSearchError(
            f"{task.source}: task '{task.name}' has no {kind} labels "
            f"({len(labels):,} samples) on this dataset{why}"
        )


def unmatched_hint(task: Task, codes, samples: bool = True) -> str:
    """``"; predicate 'x' (code ...) matches no event in the data; closest codes: ..."`` for the
    predicates that explain an empty class, or "" when every one of them matches some code.

    With ``samples`` (there are samples but no positives) the label's predicates are checked;
    otherwise (no samples at all) the trigger's and the windows' constraints' too.
    """
    cfg = task.config
    codes = sorted(set(codes))
    frame = pl.DataFrame({"code": codes}, schema={"code": pl.String})
    plain = cfg.plain_predicates
    derived = getattr(cfg, "derived_predicates", {}) or {}
    memo: dict[str, list[str]] = {}

    def dead(name: str) -> list[str]:
        """The plain predicates that make ``name`` match no code."""
        if name in memo:
            return memo[name]
        memo[name] = []
        if name in plain:
            p = plain[name]
            try:
                hit = frame.filter(_code_expr(p.code)).height > 0
            except Exception:  # an odd code spec: let ACES speak for it
                hit = True
            memo[name] = [] if hit else [name]
        elif name in derived:
            parts = [dead(x) for x in derived[name].input_predicates]
            if derived[name].is_and:
                memo[name] = [n for d in parts for n in d]
            elif all(parts):
                memo[name] = [n for d in parts for n in d]
        return memo[name]

    roots = [w.label for w in cfg.windows.values() if w.label]
    if not samples:
        roots = [cfg.trigger.predicate] + [
            p for w in cfg.windows.values() for p, (lo, _) in (w.has or {}).items()
            if lo is not None and lo > 0] + roots
    found: list[str] = []
    for r in roots:
        found += [n for n in dead(r) if n not in found]
    if not found:
        return ""
    parts = []
    for name in found[:2]:
        code = plain[name].code
        near = closest_codes(code, codes)
        spec = code if isinstance(code, str) else next(f"{k} {v}" for k, v in code.items())
        hint = f"predicate '{name}' (code {spec}) matches no event in the data"
        if near:
            hint += f"; closest codes present: {', '.join(near)}"
            if isinstance(code, str) and any(c.startswith(code) for c in near):
                hint += (f" (ACES matches codes exactly; code: {{regex: \"^{code}\"}} matches it "
                         "and its sub-codes)")
        parts.append(hint)
    return "; " + "; ".join(parts)


def _code_expr(code) -> pl.Expr:
    """The code part of an ACES plain predicate, as a polars expression on ``code``."""
    if isinstance(code, dict):
        if "regex" in code:
            return pl.col("code").str.contains(code["regex"])
        return pl.col("code").is_in(list(code["any"]))
    return pl.col("code") == code


def closest_codes(code, codes: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` codes of the data nearest an ACES code spec: codes it is a prefix of first
    (``DX//ICD10//E11`` -> ``DX//ICD10//E11.9``), then by similarity (difflib)."""
    import difflib
    import re

    if isinstance(code, dict):
        if "any" in code:
            wanted = [str(c) for c in code["any"]]
        else:  # the regex's literal start: "^DX//ICD10//N18" -> "DX//ICD10//N18"
            wanted = [re.split(r"[\\\[\](){}.*+?|$]", str(code.get("regex", "")).lstrip("^"))[0]]
    else:
        wanted = [str(code)]
    out: list[str] = []
    for w in wanted:  # the sub-codes of a code given too short
        if w:
            out += [c for c in codes if c.startswith(w) and c not in out][: n - len(out)]
    if out:
        return out
    for w in wanted:
        out += [c for c in difflib.get_close_matches(w, codes, n=n, cutoff=0.6) if c not in out]
    return out[:n]


def attach_oracle(labels: pl.DataFrame, oracle_path: Path) -> pl.DataFrame:
    """Add ``true_prob`` from the generator's oracle file (null where it has no row, or no file).

    The oracle file has ``subject_id, prediction_time, probability, label``.
    """
    if not oracle_path.exists():
        return labels.with_columns(pl.lit(None, dtype=pl.Float64).alias("true_prob"))
    oracle = pl.read_parquet(oracle_path)
    for col in ("subject_id", "prediction_time", "probability"):
        if col not in oracle.columns:
            raise ClaimsSearchError(f"{oracle_path}: column '{col}' is missing")
    oracle = oracle.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("prediction_time").cast(pl.Datetime("us")),
        pl.col("probability").cast(pl.Float64).alias("true_prob"),
    ).unique(["subject_id", "prediction_time"], keep="first")
    return labels.join(oracle, on=["subject_id", "prediction_time"], how="left")


def oracle_scores(labels: pl.DataFrame) -> dict | None:
    """AUROC/AUPRC of ``true_prob`` against the labels, overall and per split: scikit-learn's
    AUROC (ties count half) and the AUPRC in expectation over the order of tied probabilities
    (:func:`claims_search.metrics.expected_average_precision`: a true probability with few values,
    like the medication task's, is otherwise under-rated as a ceiling).

    Only rows with a known ``true_prob`` count; None when there are none. A split with one
    class only gets null scores.
    """
    from sklearn.metrics import roc_auc_score

    from claims_search.metrics import expected_average_precision

    known = labels.filter(pl.col("true_prob").is_not_null())
    if len(known) == 0:
        return None

    def score(df: pl.DataFrame) -> dict:
        y = df["label"].to_numpy()
        p = df["true_prob"].to_numpy()
        if y.all() or not y.any():
            return {"auroc": None, "auprc": None, "n": len(df)}
        return {
            "auroc": float(roc_auc_score(y, p)),
            "auprc": expected_average_precision(y, p),
            "n": len(df),
        }

    out = score(known)
    out["coverage"] = len(known) / len(labels)
    out["splits"] = {
        s: score(known.filter(pl.col("split") == s))
        for s in sorted(known["split"].unique().to_list())
    }
    return out
