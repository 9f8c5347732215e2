"""Inputs a careless or hostile user gives partbench (issue 10, the input half): weights files
that are not weights, downloads that are not the file, names that are paths, JSON of the wrong
type, and names and messages that look like markup. Every file is built here; the only
network is a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import dataset_trees as trees
import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rich.console import Console

from partbench import plugins
from partbench.cli import cli
from partbench.datasets import coco
from partbench.encoders.checkpoints import (
    cached_weights,
    download_weights,
    load_strict,
    read_checkpoint,
)
from partbench.errors import CheckpointError, DataError, PartbenchError
from partbench.files import download, write_atomic
from partbench.hookspecs import hookimpl
from partbench.specs import DatasetSpec, EncoderSpec, TaskSpec
from partbench.text import csv_cell, markdown_cell, rich_text, xml_text

# --- a server on 127.0.0.1 that misbehaves on request ------------------------------------


class Route:
    def __init__(self, body: bytes, content_type: str = "application/octet-stream", *,
                 announce: int | None = None, slow: bool = False):  # fmt: skip
        self.body, self.content_type, self.announce, self.slow = body, content_type, announce, slow


@pytest.fixture
def server(monkeypatch):
    """Yields (routes, base URL): set routes[path] = Route(...) to serve something."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    routes: dict[str, Route] = {}
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(route.announce or len(route.body)))
            self.end_headers()
            try:
                if route.slow:  # trickle until the client goes away (or the test ends)
                    deadline = time.monotonic() + 30
                    while not stop.is_set() and time.monotonic() < deadline:
                        self.wfile.write(b"\0" * 65536)
                        self.wfile.flush()
                        time.sleep(0.02)
                else:
                    self.wfile.write(route.body)  # then close: short when announce > len(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield routes, f"http://127.0.0.1:{httpd.server_address[1]}"
    stop.set()
    httpd.shutdown()
    httpd.server_close()


def _saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _linear_state(width: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in torch.nn.Linear(width, 2).state_dict().items()}


def _validate_linear(path: Path) -> None:
    """What an encoder's check does: weights-only read, then the strict key check."""
    load_strict(torch.nn.Linear(3, 2), read_checkpoint(path), path)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- weights files that are not weights --------------------------------------------------


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"hello, I am a README\n", "a text file"),
        (b"<!DOCTYPE html><html><body>Sign in to continue</body></html>", "an HTML page"),
        (b"", "an empty file"),
        (pickle.dumps({"weight": [1.0, 2.0]}, protocol=4), "a plain pickle"),
        (b"\x1f\x8b\x08\x00" + b"\0" * 40, "a compressed or tar archive"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a checkpoint: it is {what}"), message
    assert "weights_only" not in message.lower()


def test_a_pickle_that_needs_code_names_the_global_and_never_runs_it(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    files = {
        "zip.pth": lambda p: torch.save({"w": torch.zeros(2), "p": _RunsCode(marker)}, p),
        "legacy.pth": lambda p: torch.save(
            {"w": torch.zeros(2), "p": _RunsCode(marker)}, p, _use_new_zipfile_serialization=False
        ),
        "plain.pkl": lambda p: p.write_bytes(pickle.dumps({"p": _RunsCode(marker)}, protocol=4)),
    }
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        for allow_namespace in (False, True):
            with pytest.raises(CheckpointError) as err:
                read_checkpoint(path, allow_namespace=allow_namespace)
            message = str(err.value)
            assert message.startswith(f"{path}: refused"), message
            assert "'posix.system'" in message or "'os.system'" in message, message
            # torch's own message advises weights_only=False; partbench never repeats it
            assert "weights_only" not in message.lower() and "trusted" not in message.lower()
    assert not marker.exists()


def test_a_namespace_is_named_when_it_is_not_allowed(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "full.pth"
    torch.save({"args": argparse.Namespace(arch="vit"), "teacher": _linear_state()}, path)
    with pytest.raises(CheckpointError, match=r"refused: .*'argparse\.Namespace'"):
        read_checkpoint(path)
    assert read_checkpoint(path, allow_namespace=True)["args"].arch == "vit"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([torch.zeros(2, 3), torch.zeros(2)], r"holds a list, not weights"),
        (torch.zeros(2, 3), r"holds a single tensor of shape \(2, 3\), not weights"),
        ({"weight": torch.zeros(2, 3), 7: torch.zeros(2)}, r"key 7 \(of type int\) at the top level"),
        ({"model": {"weight": torch.zeros(2, 3), (1, 2): torch.zeros(2)}},
         r"key \(1, 2\) \(of type tuple\) at 'model'"),
    ],
)  # fmt: skip
def test_a_weights_file_of_the_wrong_shape_is_refused_naming_file_and_key(
    tmp_path: Path, obj: object, message: str
) -> None:
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=message) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(str(path))


def test_a_value_that_is_not_a_tensor_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"weight": torch.zeros(2, 3), "bias": "0.5"}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: 'bias' holds a str, not a tensor"):
        _validate_linear(path)
    # Dicts without tensors may be keyed otherwise: an optimizer's state is keyed by integers.
    torch.save({"model": _linear_state(), "optimizer": {"state": {0: {"step": 3}}}}, path)
    assert set(read_checkpoint(path)["model"]) == {"weight", "bias"}


def test_a_registered_encoder_reports_a_bad_weights_file_in_one_line(tmp_path: Path) -> None:
    from partbench.specs import EncoderRequest

    path = tmp_path / "mini.pth"
    torch.save({"pos_embed": torch.zeros(1, 65, 128), 3: torch.zeros(1)}, path)
    spec = plugins.registry().encoder("mini-random")
    with pytest.raises(CheckpointError, match=r"key 3 \(of type int\)") as err:
        spec.load(EncoderRequest(name="mini-random", weights=path))
    assert str(path) in str(err.value)


# --- one verified download ---------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_downloaded_weights_are_kept_only_once_they_load(tmp_path: Path, server) -> None:
    routes, base = server
    cache = tmp_path / "weights"
    dest = cache / "linear.pth"
    good = _saved(_linear_state())
    marker = tmp_path / "code_ran"
    routes["/good"] = Route(good)
    routes["/truncated"] = Route(good[: len(good) // 2], announce=len(good))
    routes["/html"] = Route(b"<html><body>quota exceeded</body></html>", "text/html; charset=utf-8")
    routes["/html-as-binary"] = Route(b"\n  <!DOCTYPE html>\n<html>log in</html>")
    routes["/wrong-keys"] = Route(_saved(_linear_state(width=4)))
    routes["/evil"] = Route(_saved({**_linear_state(), "x": _RunsCode(marker)}))
    routes["/not-weights"] = Route(b"PK\x03\x04 but not really a zip")
    expected = {
        "/truncated": r"closed after \d+ of \d+ bytes",
        "/html": r"HTML page",
        "/html-as-binary": r"HTML page",
        "/wrong-keys": r"discarded: linear\.pth: checkpoint does not match the encoder; wrong shape",
        "/evil": r"discarded: linear\.pth: refused: .*system",
        "/not-weights": r"discarded: linear\.pth: not a readable checkpoint",
        "/absent": r"download failed \(HTTP 404",
    }
    for route, message in expected.items():
        with pytest.raises(CheckpointError, match=message) as err:
            download_weights(f"{base}{route}", dest, _validate_linear, progress=False)
        assert f"{base}{route}" in str(err.value)
        assert _leftovers(cache) == [], route  # nothing under the final name, no temporaries
    assert not marker.exists()

    digest = download_weights(f"{base}/good", dest, _validate_linear, progress=False)
    assert digest == hashlib.sha256(good).hexdigest() and dest.read_bytes() == good
    assert _leftovers(cache) == ["linear.pth", "linear.pth.sha256"]
    assert (cache / "linear.pth.sha256").read_text().split() == [digest, "linear.pth"]
    assert cached_weights(dest) == digest
    # A hash the file name promises (torch hub's convention) is held to as well.
    with pytest.raises(CheckpointError, match="does not match the abcdef12"):
        download_weights(f"{base}/good", cache / "other.pth", _validate_linear,
                         sha256_prefix="abcdef12", progress=False)  # fmt: skip
    assert _leftovers(cache) == ["linear.pth", "linear.pth.sha256"]


def test_a_cached_file_is_checked_against_its_recorded_sha256(tmp_path: Path, server) -> None:
    routes, base = server
    routes["/good"] = Route(_saved(_linear_state()))
    dest = tmp_path / "weights" / "linear.pth"
    download_weights(f"{base}/good", dest, _validate_linear, progress=False)
    with open(dest, "r+b") as fh:  # one flipped byte, after the download was verified
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(CheckpointError, match=r"differs from the .* recorded when it was downloaded") as err:
        cached_weights(dest)
    assert str(dest) in str(err.value)
    # A file put in the cache by hand has no record and is taken as it is.
    by_hand = tmp_path / "weights" / "by_hand.pth"
    by_hand.write_bytes(_saved(_linear_state()))
    assert cached_weights(by_hand) == hashlib.sha256(by_hand.read_bytes()).hexdigest()


def test_data_fetch_discards_an_html_page(tmp_path: Path, server) -> None:
    from partbench.datasets.fetch import fetch

    routes, base = server
    page = b"<!doctype html><html>Please accept the terms</html>"
    routes["/cub.tgz"] = Route(page, "text/html")
    dest = tmp_path / "data" / "cub200"
    with pytest.raises(DataError, match="HTML page"):
        fetch("cub200", dest=dest, url=f"{base}/cub.tgz", sha256=hashlib.sha256(page).hexdigest(),
              progress=False)  # fmt: skip
    assert _leftovers(dest.parent) == []


def test_sigterm_during_a_fetch_leaves_no_temporary_files(tmp_path: Path, server) -> None:
    routes, base = server
    routes["/slow.tgz"] = Route(b"", announce=50 << 20, slow=True)
    dest = tmp_path / "data" / "cub200"
    code = textwrap.dedent(f"""
        from partbench.datasets.fetch import fetch
        fetch("cub200", dest={str(dest)!r}, url="{base}/slow.tgz", sha256="0" * 64, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        # Wait until the body is streaming into a temporary file beside the destination.
        while time.monotonic() < deadline:
            partial = [p for p in dest.parent.rglob("*") if p.is_file()] if dest.parent.exists() else []
            if partial and partial[0].stat().st_size > 0:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the download never started")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()
    assert _leftovers(dest.parent) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../../outside", "is not a dataset name"),
        ("/tmp/elsewhere", "is not a dataset name"),
        (".hidden", "is not a dataset name"),
        ("cub200/../../x", "is not a dataset name"),
        ("no-such-set", "unknown dataset 'no-such-set'"),
        ("synparts", "generated by partbench; there is nothing to fetch"),
    ],
)
def test_data_fetch_refuses_a_name_that_is_not_a_dataset(
    tmp_path: Path, monkeypatch, name: str, message: str
) -> None:
    data = tmp_path / "deep" / "data"
    monkeypatch.setenv("PARTBENCH_DATA", str(data))
    args = ["data", "fetch", name, "--url", "http://127.0.0.1:9/x.tgz", "--sha256", "0" * 64]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "deep").exists()


# --- COCO image ids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10", r"'image_id' must be an integer, found '10' \(str\)"),
        (10.0, r"'image_id' must be an integer, found 10\.0 \(float\)"),
        (True, r"'image_id' must be an integer, found True \(bool\)"),
        (None, r"'image_id' must be an integer, found None"),
        (..., r"'image_id' is missing"),
    ],
)
def test_coco_image_id_of_the_wrong_type_names_file_and_annotation(
    tmp_path: Path, value: object, message: str
) -> None:
    root = trees.coco_tree(tmp_path / "coco")
    path = root / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(path.read_text())
    if value is ...:
        del data["annotations"][2]["image_id"]
    else:
        data["annotations"][2]["image_id"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"annotations\[2\] \(id 103\): {message}") as err:
        coco.load(root).samples("train")
    assert str(err.value).startswith(str(path))


# --- text stays text ---------------------------------------------------------------------


class _Markup:
    @hookimpl
    def register_encoders(self, register):
        register(EncoderSpec(name="[/bold]", load=lambda r: None, family="none",
                             weights_source="[link=file:///etc/passwd]x[/link]"))  # fmt: skip
        register(EncoderSpec(name="enc[red]", load=lambda r: None, family="none"))

    @hookimpl
    def register_tasks(self, register):
        register(TaskSpec("[/i]task", "part", "mAP[/]", "keypoints", lambda options: None))

    @hookimpl
    def register_datasets(self, register):
        register(DatasetSpec("[bold]data[/bold]", lambda root: None, frozenset({"images"}),
                             source="[/]", builtin_data=True))  # fmt: skip


@pytest.mark.parametrize(
    ("what", "shown"),
    [
        ("encoders", ["[/bold]", "enc[red]", "[link=file:///etc/passwd]x[/link]"]),
        ("tasks", ["[/i]task", "mAP[/]"]),
        ("datasets", ["[bold]data[/bold]", "[/]"]),
        ("plugins", ["markup-dist", "[/bold]", "[/i]task"]),
    ],
)
def test_names_from_plugins_are_printed_as_text(monkeypatch, what: str, shown: list[str]) -> None:
    class Dist:
        name, version = "markup-dist", "[/b]1.0"

    ep = types.SimpleNamespace(name="markup", dist=Dist(), load=lambda: _Markup())
    real = list(plugins.entry_points(group="partbench"))
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real, ep])
    monkeypatch.setenv("PARTBENCH_LOAD_PLUGINS", "partbench,markup-dist")
    plugins.reset_registry()
    result = CliRunner().invoke(cli, ["list", what], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for text in shown:
        assert text in result.stdout, result.stdout


def test_progress_descriptions_are_text() -> None:
    from partbench.cli import _progress

    out = io.StringIO()
    with _progress(Console(file=out, force_terminal=True, width=200)) as progress:
        task = progress.add_task("[/bold] on part-retrieval", total=2)
        progress.advance(task)
        progress.refresh()
    assert "[/bold] on part-retrieval" in out.getvalue()


def _record(**fields) -> dict:
    base = dict(id=7, encoder="enc[/b]", task="part-retrieval", level="part", dataset="cub200",
                status="failed", metrics={}, headline="mAP", score=None, n_items=None, timing=None,
                device="cpu[/]", weights_id="", config_hash="", config={}, versions={}, seed=0,
                items_per_class=None, details=None, started_at=None, finished_at=None,
                error="images/Albatross_0001[/i].jpg: truncated [bold]")  # fmt: skip
    return {**base, **fields}


def test_runs_print_names_and_errors_from_the_database_as_text() -> None:
    from partbench.render.terminal import runs_table

    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(runs_table([_record()], width=400, wide=True))
    text = out.getvalue()
    assert "Albatross_0001[/i].jpg: truncated [bold]" in text
    assert "enc[/b]" in text and "cpu[/]" in text


def test_runs_command_survives_markup_in_a_stored_error(tmp_path: Path) -> None:
    from partbench.store import Store

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(url)
    fields = dict(encoder="enc[/b]", encoder_plugin="partbench", family="none", weights_id="x",
                  task="part-retrieval", task_plugin="partbench", level="part", dataset="cub200",
                  dataset_fingerprint="f", config={}, headline_metric="mAP", device="cpu",
                  versions={}, seed=0)  # fmt: skip
    run_id = store.claim("hash-1", **fields)
    store.fail(run_id, "images/Albatross_0001[/i].jpg: image file is truncated [bold]")
    result = CliRunner().invoke(cli, ["runs", "--db", url, "--wide"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "Albatross_0001[/i].jpg: image file is truncated [bold]" in result.stdout
    assert "enc[/b]" in result.stdout


def test_write_atomic_keeps_permissions_and_refuses_clearly(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        kept = tmp_path / "board.md"
        kept.write_text("old")
        kept.chmod(0o640)
        write_atomic(kept, "new")
        assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640
        fresh = tmp_path / "sub" / "fresh.md"
        write_atomic(fresh, "x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not a temporary file's 0600
    finally:
        os.umask(old)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for target in (blocker / "out.md", tmp_path):
        with pytest.raises(PartbenchError, match=r"cannot be written|is a folder") as err:
            write_atomic(target, "x")
        assert str(target) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "board.md", "sub"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_write_atomic_in_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PartbenchError, match="cannot be written"):
            write_atomic(folder / "out.md", "x")
    finally:
        folder.chmod(0o755)


def test_leaderboard_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    import numpy as np

    from partbench.specs import MetricValue
    from partbench.store import Store

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(url)
    fields = dict(encoder="enc", encoder_plugin="partbench", family="none", weights_id="x",
                  task="part-retrieval", task_plugin="partbench", level="part", dataset="synparts",
                  dataset_fingerprint="f", config={"options": {}}, headline_metric="mAP",
                  device="cpu", versions={}, seed=0)  # fmt: skip
    run_id = store.claim("hash-1", **fields)
    store.finish(run_id, {"mAP": MetricValue(50.0, 40.0, 60.0)}, n_items=4,
                 items={"ap": np.array([0.5, 0.5, 0.4, 0.6]), "label": np.array([0, 0, 1, 1])})  # fmt: skip
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "board.md"
    result = CliRunner().invoke(cli, ["leaderboard", "--db", url, "--output", str(target)])
    assert result.exit_code == 1, result.output
    assert f"Error: {target}: cannot be written" in result.output and "Traceback" not in result.output
    kept = tmp_path / "board.md"
    kept.write_text("old")
    kept.chmod(0o604)
    result = CliRunner().invoke(cli, ["leaderboard", "--db", url, "--output", str(kept)])
    assert result.exit_code == 0, result.output
    assert "enc" in kept.read_text() and stat.S_IMODE(kept.stat().st_mode) == 0o604


def test_download_refuses_other_schemes(tmp_path: Path) -> None:
    for url in ("file:///etc/passwd", "ftp://example.org/x"):
        with pytest.raises(PartbenchError, match="only http and https"):
            download(url, tmp_path / "x")
    assert _leftovers(tmp_path) == []


# --- escaping for the other formats (partbench.text) ------------------------------------

# Text as hostile as a name can be: markup of every kind, separators, controls, surrogates.
hostile = st.text(
    st.one_of(
        st.sampled_from(list("|\\<>&\"'[]/=+-@*_`#\n\r\t\x00\x0b\x1f\u2028\ud800 ")),
        st.characters(codec="utf-8"),
    ),
    max_size=30,
)
HOSTILE = ["[/bold]", "a|b", "x\\", "<script>alert(1)</script>", "l1\nl2\r\nl3", "=cmd|' /C calc'!A0",
           "-2+3", "@SUM(A1)", "+1", "\x00\x1b[31m\ud800", "Albatross_0001[/i].jpg"]  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(hostile)
@example("\\\\")  # two trailing backslashes: rich's own escape halves them
@example("\\[")  # rich reads a backslash-bracket outside any tag as a bracket
def test_rich_text_prints_exactly_what_it_was_given(value: str) -> None:
    out = io.StringIO()
    console = Console(file=out, width=10_000, color_system=None, highlight=False, emoji=False)
    console.print(f"[bold]{rich_text(value)}[/bold]", end="", soft_wrap=True)
    from rich.text import Text

    expected = io.StringIO()
    Console(file=expected, width=10_000, color_system=None, highlight=False, emoji=False).print(
        Text(value), end="", soft_wrap=True
    )
    assert out.getvalue() == expected.getvalue()


def _markdown_row(cells: list[str]) -> str:
    from markdown_it import MarkdownIt

    table = "| a | b |\n|---|---|\n| " + " | ".join(cells) + " |\n"
    return MarkdownIt("commonmark").enable("table").render(table)


@settings(max_examples=30, deadline=None)
@given(hostile)
def test_markdown_cell_stays_one_cell_of_plain_text(value: str) -> None:
    import html as html_lib
    import re

    rendered = _markdown_row([markdown_cell(value), "end"])
    body = rendered.split("<tbody>")[1]
    cells = re.findall(r"<td>(.*?)</td>", body, flags=re.S)
    assert len(cells) == 2 and cells[1] == "end", rendered
    # The only tag left is the <br> standing for a line break; the rest is the value's text.
    assert re.sub(r"<br\s*/?>", "", cells[0]).count("<") == 0
    shown = html_lib.unescape(re.sub(r"<br\s*/?>", "\n", cells[0]))
    normalised = re.sub(r"\r\n|\r|\n|\u2028|\u2029|\x85|\x0b|\x0c", "\n", value).replace("\x00", "\ufffd")
    assert shown == normalised.strip(" \t") or shown == normalised.strip()


@settings(max_examples=30, deadline=None)
@given(hostile)
def test_xml_text_parses_back_to_the_text_without_forbidden_characters(value: str) -> None:
    import re
    import xml.etree.ElementTree as ET

    escaped = xml_text(value)
    root = ET.fromstring(f'<svg a="{escaped}"><text>{escaped}</text></svg>')
    allowed = re.sub("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]", "", value)
    assert (root[0].text or "") == allowed
    assert root.get("a") == allowed


@settings(max_examples=30, deadline=None)
@given(hostile)
def test_csv_cell_never_starts_a_formula(value: str) -> None:
    import csv

    buf = io.StringIO()
    csv.writer(buf).writerow([csv_cell(value), 1.5])
    read = next(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert read[1] == "1.5"
    cell = read[0]
    is_number = bool(__import__("re").fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value))
    if value[:1] in ("=", "+", "-", "@", "\t", "\r") and not is_number:
        assert cell == "'" + value
    else:
        assert cell == value


def test_escaping_examples() -> None:
    assert markdown_cell("a|b") == "a\\|b"
    assert markdown_cell("x\\") == "x\\\\"
    assert markdown_cell("<b>1</b>\nnext") == "&lt;b&gt;1&lt;/b&gt;<br>next"
    assert xml_text('<a href="x">&\x00\x1b') == "&lt;a href=&quot;x&quot;&gt;&amp;"
    assert xml_text("\ud800ok") == "ok"
    assert [csv_cell(v) for v in ("=1+1", "@SUM(A1)", "-cmd", "+x", "-2.5", "1e3", 3, None)] == [
        "'=1+1", "'@SUM(A1)", "'-cmd", "'+x", "-2.5", "1e3", 3, None
    ]  # fmt: skip
    assert rich_text("[/bold]") == "\\[/bold]"
    for value in HOSTILE:
        test_rich_text_prints_exactly_what_it_was_given.hypothesis.inner_test(value)
        test_markdown_cell_stays_one_cell_of_plain_text.hypothesis.inner_test(value)
        test_xml_text_parses_back_to_the_text_without_forbidden_characters.hypothesis.inner_test(value)
        test_csv_cell_never_starts_a_formula.hypothesis.inner_test(value)
