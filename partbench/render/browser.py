"""A small headless-Chromium driver over the DevTools protocol on a pipe (standard library only).

Chromium started with ``--remote-debugging-pipe`` reads protocol messages from file
descriptor 3 and writes its answers to descriptor 4, each message JSON ended by a NUL byte.
That needs no network port and no websocket library. Used for the leaderboard page's
screenshot and by its browser test.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from partbench.errors import PartbenchError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
)


class BrowserError(PartbenchError):
    """Chromium is missing, did not start, or did not answer."""


def find_chromium() -> str | None:
    """The Chromium executable: $PARTBENCH_CHROMIUM, else the first of CANDIDATES on PATH."""
    explicit = os.environ.get("PARTBENCH_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _high(fd: int) -> int:
    """The same pipe end on a descriptor above 9, so that placing the child's 3 and 4 cannot
    overwrite one of the two ends before it is copied."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """``with Browser() as b: page = b.open(url); page.evaluate("1 + 1")``."""

    def __init__(self, executable: str | None = None, *, timeout: float = 30.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("no Chromium found (install Debian's chromium, or set PARTBENCH_CHROMIUM)")
        self.timeout = timeout
        self._next = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        self._profile = tempfile.TemporaryDirectory(prefix="partbench-chromium-")
        to_child_r, self._to_child = (_high(fd) for fd in os.pipe())
        self._from_child, from_child_w = (_high(fd) for fd in os.pipe())

        def place() -> None:  # in the child, before exec
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        args = [
            self.executable,
            *FLAGS,
            f"--user-data-dir={self._profile.name}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        try:
            self.process = subprocess.Popen(
                args,
                pass_fds=(3, 4),
                preexec_fn=place,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            self._cleanup_fds(to_child_r, from_child_w)
            raise BrowserError(f"cannot start {self.executable}: {exc}") from exc
        os.close(to_child_r)
        os.close(from_child_w)
        try:
            self.call("Browser.getVersion")
        except BrowserError:
            self.close()
            raise

    def _cleanup_fds(self, *fds: int) -> None:
        for fd in (*fds, self._to_child, self._from_child):
            with contextlib.suppress(OSError):  # already closed
                os.close(fd)

    # -- the protocol

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            os.write(self._to_child, json.dumps(message).encode() + b"\0")
        except OSError as exc:
            raise BrowserError(f"Chromium stopped listening: {exc}") from exc
        return self._next

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_child], [], [], max(left, 0))
            if not ready:
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise BrowserError("Chromium closed the protocol pipe (did it start?)")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if message.get("method") == "Page.javascriptDialogOpening":
            # A dialog (alert() from injected markup, say) stops the page until answered:
            # dismiss it, and keep the event so that Page.problems() reports it.
            self.send("Page.handleJavaScriptDialog", {"accept": True}, message.get("sessionId"))
        return message

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Send a command and wait for its answer; events that arrive meanwhile are kept."""
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(
        self, method: str, session: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The first event ``method`` (already received or arriving within ``timeout``)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method and (session is None or event.get("sessionId") == session):
                    self.events.remove(event)
                    return event
            seen = len(self.events)
            message = self._read(deadline)
            if "method" in message:
                self.events.append(message)

    def open(self, url: str, *, width: int = 1280, height: int = 900) -> Page:
        """A new tab showing ``url``, loaded (its load event fired)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return page

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.send("Browser.close")
                    self.process.wait(timeout=10)
                except (BrowserError, subprocess.TimeoutExpired):
                    self.process.kill()
                    self.process.wait()
        finally:
            self._cleanup_fds()
            self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-serialisable results only)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript error: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real mouse click (press and release) at page coordinates."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    def click_selector(self, selector: str) -> None:
        """Click the middle of the first element matching ``selector``."""
        box = self.evaluate(
            "(() => { const e = document.querySelector(" + json.dumps(selector) + ");"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"nothing matches {selector}")
        self.click(*box)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, dialogs and error log entries seen on this page."""
        out = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            p = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif event["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(
                    "console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                )
            elif event["method"] == "Page.javascriptDialogOpening":  # alert(), as injected markup would
                out.append(f"dialog: {p.get('type')} {p.get('message')}")
            elif event["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        return out

    def settle(self) -> None:
        """Let pending events (console messages after load) arrive."""
        self.call(
            "Runtime.evaluate", {"expression": "new Promise(r => setTimeout(r, 50))", "awaitPromise": True}
        )

    def screenshot(self, path: Path, *, width: int = 1280) -> Path:
        """A PNG of the whole page at ``width`` CSS pixels."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        height = int(min(size["height"], 16_000))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def screenshot(html: Path, png: Path, *, width: int = 1280) -> Path:
    """Render the page ``html`` in headless Chromium and save a PNG of all of it."""
    with Browser() as browser:
        page = browser.open(html.resolve().as_uri(), width=width)
        return page.screenshot(png, width=width)


def main(argv: list[str] | None = None) -> int:
    """``python -m partbench.render.browser PAGE.html PAGE.png [WIDTH]``: a screenshot."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m partbench.render.browser PAGE.html PAGE.png [WIDTH]", file=sys.stderr)
        return 2
    try:
        out = screenshot(Path(args[0]), Path(args[1]), width=int(args[2]) if len(args) == 3 else 1280)
    except PartbenchError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
