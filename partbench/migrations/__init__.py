"""Alembic migrations of the results store, run by ``partbench.store.Store`` when it opens a
database: no alembic.ini is needed at run time.

Revisions are numbered ``0001``, ``0002``, ... and revision N leaves ``schema_version`` N in
``partbench_meta``, so ``partbench.store.SCHEMA_VERSION`` is the head. A new migration is the
last file copied (``script.py.mako`` is the template): the next number as ``revision``, the
last as ``down_revision``, ``schema_version`` set to the new number; then ``SCHEMA_VERSION`` and
the models in ``partbench/store/models.py`` follow, and tests/test_store.py checks that they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCRIPT_LOCATION = Path(__file__).resolve().parent


def _config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    # configparser interpolation: a literal % in the install path must be doubled.
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: Any, *, stamp: str | None = None, target: str = "head") -> None:
    """Bring the database on ``connection`` (inside the caller's transaction) to ``target``.

    ``stamp`` records a revision first without running it: a database written by a release
    that predates the migrations already holds that revision's tables.
    """
    from alembic import command

    cfg = _config(connection)
    if stamp is not None:
        command.stamp(cfg, stamp)
    command.upgrade(cfg, target)


def revisions() -> list[str]:
    """Every revision the package ships, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(SCRIPT_LOCATION))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(SCRIPT_LOCATION)).get_current_head()
