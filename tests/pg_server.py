"""A PostgreSQL server for the tests: the one ``.ci/run`` started (``PARTBENCH_TEST_POSTGRES``,
a URL to its maintenance database), else a throwaway cluster started here from Debian's
``postgresql`` binaries. Each test gets a database of its own, dropped afterwards.

When no server can be had the tests that need one are skipped with the reason, which
pytest's ``-ra`` prints; under CI (``CI`` set) they fail instead: CI must run them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "PARTBENCH_TEST_POSTGRES"


def _binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's versioned folder."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _as_owner(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: root runs it as the postgres user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class _Cluster:
    """initdb into a temporary folder, pg_ctl start on a socket in it; stop() removes it all."""

    def __init__(self) -> None:
        bindir = _binaries()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl); apt-get install postgresql")
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise RuntimeError("running as root without runuser to start PostgreSQL as postgres")
        self.root = Path(tempfile.mkdtemp(prefix="partbench-pg-"))
        self.data, self.socket = self.root / "data", self.root
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.pg_ctl = str(bindir / "pg_ctl")
        try:
            self._run(
                [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            )
            options = f"-k {self.socket} -c listen_addresses='' -c max_connections=200 -c fsync=off"
            self._run(
                [
                    self.pg_ctl,
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "log"),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            )
        except Exception:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.url = f"postgresql+psycopg://postgres@/postgres?host={self.socket}"

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:1])} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason}")


def server() -> Iterator[str]:
    """A session fixture's body: the maintenance URL of a running server."""
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    try:
        cluster = _Cluster()
    except Exception as exc:
        _unavailable(str(exc))
    try:
        yield cluster.url
    finally:
        cluster.stop()


def _admin(url: str):
    import sqlalchemy as sa

    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def database(admin_url: str) -> Iterator[str]:
    """A fixture's body: a fresh, empty database on the server, dropped after the test."""
    import sqlalchemy as sa

    name = f"pbtest_{uuid.uuid4().hex[:12]}"
    engine = _admin(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        for _ in range(3):
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except Exception:
                time.sleep(0.5)
        engine.dispose()
