"""Where partbench keeps things: one place that reads the environment variables.

PARTBENCH_HOME  folder for caches, weights and data (default: the user's data directory)
PARTBENCH_DB    SQLAlchemy URL of the results store (default: SQLite file in PARTBENCH_HOME)
PARTBENCH_DATA  folder holding one sub-folder per real dataset (default: PARTBENCH_HOME/data)
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("PARTBENCH_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("partbench", appauthor=False))


def database_url(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    env = os.environ.get("PARTBENCH_DB")
    if env:
        return env
    return f"sqlite:///{home() / 'partbench.db'}"


def data_root(dataset: str) -> Path:
    base = os.environ.get("PARTBENCH_DATA")
    root = Path(base).expanduser() if base else home() / "data"
    return root / dataset


def weights_cache() -> Path:
    return home() / "weights"
