"""Shared fixtures. Tests read as examples: fixture patients are small literal tables; the
bigger fixtures below are a small synthetic claims dataset and its prepared cache, made once
per test session through the real CLI."""

import pytest

pytest_plugins = ["tests.cluster_harness"]  # real multi-node Ray, mlflow server, headless Chromium

from claims_search.cli import main as cli


@pytest.fixture(scope="session")
def synthetic_meds(tmp_path_factory):
    """2,000 synthetic patients as MEDS (seeded: the same data every run)."""
    out = tmp_path_factory.mktemp("synthetic") / "meds"
    assert cli(["synth", "--patients", "2000", "--seed", "7", "--out", str(out), "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def prepared(synthetic_meds, tmp_path_factory):
    """The tokenized cache of `synthetic_meds` with both built-in tasks."""
    out = tmp_path_factory.mktemp("prepared") / "cache"
    assert cli(["prepare", "--meds", str(synthetic_meds), "--out", str(out), "--max-len", "128",
                "--workers", "1"]) == 0
    return out
