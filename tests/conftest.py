"""Every test gets its own PARTBENCH_HOME and database, and sees only partbench's own plugins
unless it asks for more."""

from __future__ import annotations

import pytest

from partbench.plugins import reset_registry


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
