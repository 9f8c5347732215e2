"""Whether a running run still has someone running it: its heartbeat, and its process on this host.

A running run's process refreshes ``heartbeat_at`` at least every HEARTBEAT_INTERVAL seconds;
one silent for HEARTBEAT_TIMEOUT seconds is abandoned. The margin covers a busy database.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from partbench.store.values import aware, now

if TYPE_CHECKING:
    from partbench.store.models import Run

HEARTBEAT_INTERVAL = 60.0
HEARTBEAT_TIMEOUT = 600.0

HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe probe (os.kill would terminate); the heartbeat decides
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    try:  # a zombie has exited; it only waits for its parent to reap it
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def is_abandoned(run: Run, timeout: float, at: dt.datetime | None = None) -> bool:
    """A running row nobody runs: no heartbeat for ``timeout`` seconds, or its process has
    died on this host. A row written before heartbeats existed has none and counts as abandoned."""
    if run.status != "running":
        return False
    beat = aware(run.heartbeat_at)
    if beat is None:
        return True
    if ((at or now()) - beat).total_seconds() > timeout:
        return True
    return run.host == HOST and run.pid is not None and not pid_alive(run.pid)
