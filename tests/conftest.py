"""Every test gets its own PARTBENCH_HOME and database, and sees only partbench's own plugins
unless it asks for more."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from partbench.plugins import reset_registry

SESSION_HOME = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Module-scoped fixtures are set up before each test's own home: they too must never
    # read or write the user's real home (its feature cache would answer their runs).
    config.stash[SESSION_HOME] = os.environ["PARTBENCH_HOME"] = tempfile.mkdtemp(prefix="partbench-tests-")
    os.environ.pop("PARTBENCH_DB", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_HOME in config.stash:
        shutil.rmtree(config.stash[SESSION_HOME], ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PARTBENCH_HOME", str(home))
    monkeypatch.delenv("PARTBENCH_DB", raising=False)
    monkeypatch.delenv("PARTBENCH_DATA", raising=False)
    monkeypatch.setenv("PARTBENCH_LOAD_PLUGINS", "partbench")
    reset_registry()
    yield home
    reset_registry()
