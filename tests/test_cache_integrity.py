"""A feature cache no damaged, foreign or half-written file can turn into a score (issue 31):
every read is checked against what the pass recorded, a bad entry is set aside and computed
again, the cache's location is refused early when it cannot work, a team can share one, and
a dataset edited in place is a different dataset. Every damage here is done the way a user,
a crash or a full disk would do it."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import dataset_trees as trees
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from partbench import cache as cache_mod
from partbench.cache import BAD, ArrayWriter, CacheWarning, Entry, FeatureCache, check_root
from partbench.cli import cli
from partbench.datasets import fetch as fetch_mod
from partbench.datasets import synparts
from partbench.datasets.cub import CUB200
from partbench.datasets.fingerprints import StatIndex
from partbench.encoders.base import Encoder, EncoderOutput, Stage
from partbench.errors import PartbenchError
from partbench.extraction import F16_MAX, fit_float16, unscaled
from partbench.subsets import cut

ARRAYS = {
    "cls": np.arange(24, dtype=np.float32).reshape(6, 4) / 7,
    "tokens": (np.arange(72, dtype=np.float32).reshape(6, 3, 4) / 5).astype(np.float16),
    "labels": np.array([0, 1, 2, 0, 1, 2]),
    "sample_index": np.arange(6),
}


def _entry(root: Path, key: str = "k" * 32, arrays: dict | None = None) -> Entry:
    entry = Entry(root / key)
    files = {}
    for name, a in (arrays or ARRAYS).items():
        w = ArrayWriter(entry.folder, name)
        w.append(a)
        files[name] = w.close()
    entry.commit(files, {"encoder": "tiny", "split": "all"})
    return entry


def _meta(entry: Entry) -> dict:
    return json.loads(entry.meta_path.read_text())


def _write_meta(entry: Entry, meta: dict) -> None:
    entry.meta_path.write_text(json.dumps(meta))


def test_an_intact_entry_reads_back_exactly_what_was_written(tmp_path):
    entry = _entry(tmp_path)
    assert set(entry.arrays()) == set(ARRAYS)
    for name, a in ARRAYS.items():
        got = entry.read(name)
        assert got.dtype == a.dtype and np.array_equal(got, a)
    assert entry.check(full=True).keys() == ARRAYS.keys()


# --- damage: each is set aside with its reason, and the entry is a miss -----------------


def _overwrite(entry: Entry, name: str, data: bytes) -> None:
    (entry.folder / _meta(entry)["arrays"][name]["file"]).write_bytes(data)


def _nan(entry):
    _overwrite(entry, "cls", np.full((6, 4), np.nan, np.float32).tobytes())


def _random(entry):
    _overwrite(entry, "cls", np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32).tobytes())


def _labels_out_of_range(entry):
    _overwrite(entry, "labels", np.full(6, 10**6, np.int64).tobytes())


def _truncated(entry):
    path = entry.folder / _meta(entry)["arrays"]["cls"]["file"]
    path.write_bytes(path.read_bytes()[:40])


def _absolute(entry):
    foreign = entry.folder.parent / "foreign.bin"
    foreign.write_bytes(ARRAYS["cls"].tobytes())
    meta = _meta(entry)
    meta["arrays"]["cls"]["file"] = str(foreign)
    _write_meta(entry, meta)


def _dotdot(entry):
    (entry.folder.parent.parent / "foreign.bin").write_bytes(ARRAYS["cls"].tobytes())
    meta = _meta(entry)
    meta["arrays"]["cls"]["file"] = "../../foreign.bin"
    _write_meta(entry, meta)


def _symlink(entry):
    foreign = entry.folder.parent / "foreign.bin"
    foreign.write_bytes(ARRAYS["cls"].tobytes())
    meta = _meta(entry)
    (entry.folder / "link.bin").symlink_to(foreign)
    meta["arrays"]["cls"]["file"] = "link.bin"
    _write_meta(entry, meta)


def _dtype_swap(entry):
    meta = _meta(entry)
    meta["arrays"]["cls"]["dtype"] = "<i4"  # the same byte count, other values
    _write_meta(entry, meta)


def _shape_swap(entry):
    meta = _meta(entry)
    meta["arrays"]["cls"]["shape"] = [4, 6]
    _write_meta(entry, meta)


def _folder_is_a_file(entry):
    import shutil

    shutil.rmtree(entry.folder)
    entry.folder.write_text("not a folder")


def _index_not_json(entry):
    entry.meta_path.write_text("{ half an index")


def _no_digest(entry):  # an entry written before digests were recorded
    meta = _meta(entry)
    for record in meta["arrays"].values():
        del record["blocks"], record["digest"], record["bytes"]
    _write_meta(entry, meta)


@pytest.mark.parametrize(
    ("damage", "slug"),
    [
        (_nan, "digest-mismatch"),
        (_random, "digest-mismatch"),
        (_labels_out_of_range, "digest-mismatch"),
        (_truncated, "wrong-size"),
        (_absolute, "foreign-path"),
        (_dotdot, "foreign-path"),
        (_symlink, "foreign-path"),
        (_dtype_swap, "record-mismatch"),
        (_shape_swap, "record-mismatch"),
        (_folder_is_a_file, "not-a-folder"),
        (_index_not_json, "unreadable-index"),
        (_no_digest, "no-digest"),
    ],
)
def test_a_damaged_entry_is_set_aside_with_its_reason_and_is_a_miss(tmp_path, damage, slug):
    root = tmp_path / "cache"
    entry = _entry(root)
    entry.arrays()  # checked once, remembered: the damage must still be seen
    damage(entry)
    with pytest.warns(CacheWarning, match=rf"cache entry {entry.folder}: .*; set aside as .*{slug}"):
        assert entry.arrays() == {}
    assert not entry.folder.exists()
    assert [p.name for p in (root / BAD).iterdir()] == [f"{entry.folder.name}-{slug}"]
    with pytest.raises(PartbenchError, match="holds no usable 'cls'"):
        entry.read("cls")
    # The pass writes the entry again from nothing.
    again = _entry(root)
    assert np.array_equal(again.read("cls"), ARRAYS["cls"])


def test_non_finite_values_recorded_with_their_digest_are_refused_like_a_fresh_pass(tmp_path):
    bad = {**ARRAYS, "cls": np.where(ARRAYS["cls"] > 1, np.inf, ARRAYS["cls"]).astype(np.float32)}
    entry = _entry(tmp_path, arrays=bad)
    with pytest.warns(CacheWarning, match="holds NaN or infinite values"):
        assert entry.arrays() == {}


def test_a_damaged_block_outside_the_read_sample_is_found_by_cache_verify(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_mod, "BLOCK", 64)  # many blocks from a small array
    big = {**ARRAYS, "cls": np.arange(4096, dtype=np.float32).reshape(1024, 4)}
    entry = _entry(tmp_path / "cache", arrays=big)
    nblocks = len(_meta(entry)["arrays"]["cls"]["blocks"])
    unsampled = next(k for k in range(nblocks) if k not in cache_mod.sample_blocks(nblocks))
    path = entry.folder / _meta(entry)["arrays"]["cls"]["file"]
    data = bytearray(path.read_bytes())
    data[unsampled * 64] ^= 0xFF
    path.write_bytes(bytes(data))
    assert set(Entry(entry.folder).arrays()) == set(big)  # a read checks its sample only
    out = CliRunner().invoke(cli, ["cache", "verify"])
    assert out.exit_code == 1 and "does not match its recorded digest" in out.output, out.output
    assert "0 entries verified, 1 set aside" in out.output
    assert not entry.folder.exists()


def test_a_run_on_a_damaged_entry_warns_recomputes_and_scores_as_before(tmp_path):
    from partbench.plugins import registry
    from partbench.runner import RunOptions, run
    from partbench.store import Store

    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    opts = RunOptions(limit=8, workers=0, options=("epochs=1",))
    (first,) = run(registry(), store, ["mini-random"], ["object-linear"], opts, say=lambda _: None)
    assert first.status == "done"
    for entry in FeatureCache(cache_mod.cache_root()).entries():
        for name, record in _meta(entry)["arrays"].items():
            if name in ("cls", "embedding"):
                (entry.folder / record["file"]).write_bytes(np.full(record["shape"], np.nan, "<f4").tobytes())
    forced = RunOptions(limit=8, workers=0, options=("epochs=1",), force=True)
    with pytest.warns(CacheWarning, match="does not match its recorded digest"):
        (second,) = run(registry(), store, ["mini-random"], ["object-linear"], forced, say=lambda _: None)
    assert second.status == "done" and second.timing["encoder_passes"] == first.timing["encoder_passes"] == 2
    assert second.value == first.value


# --- the cache's location ---------------------------------------------------------------


def _file_root(tmp_path):
    (tmp_path / "file").write_text("x")
    return tmp_path / "file"


@pytest.mark.parametrize(
    ("where", "why"),
    [
        (_file_root, "is not a folder"),
        (lambda tmp_path: Path("/dev/null"), "is not a folder"),
        (lambda tmp_path: _file_root(tmp_path) / "cache", "cannot be created"),
    ],
)
def test_a_cache_root_that_cannot_work_is_refused_before_any_encoder_loads(tmp_path, monkeypatch, where, why):
    root = where(tmp_path)
    monkeypatch.setenv("PARTBENCH_CACHE", str(root))
    db = tmp_path / "c.db"
    out = CliRunner().invoke(
        cli, ["run", "-e", "mini-random", "-t", "object-linear", "--limit", "4", "--db", f"sqlite:///{db}"]
    )
    assert out.exit_code != 0
    assert f"feature cache {root} {why}" in out.output and "--no-cache" in out.output, out.output
    assert "Traceback" not in out.output
    listed = CliRunner().invoke(cli, ["runs", "--db", f"sqlite:///{db}", "--format", "json"])
    assert json.loads(listed.output or "[]") == []  # no run was claimed: nothing left interrupted


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_a_read_only_cache_root_is_refused(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PartbenchError, match=r"is not writable.*--no-cache"):
            check_root(tmp_path)
    finally:
        tmp_path.chmod(0o755)


# --- sharing, leftovers, full disks -----------------------------------------------------


def test_entry_files_and_folders_get_the_umask_permissions(tmp_path):
    old = os.umask(0o002)
    try:
        entry = _entry(tmp_path / "cache")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in entry.folder.iterdir()}
    assert modes and all(m == 0o664 for m in modes.values()), modes
    assert stat.S_IMODE(entry.folder.stat().st_mode) == 0o775


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")
def test_an_entry_written_by_one_user_is_read_and_checked_by_another(tmp_path):
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="partbench-shared-"))
    try:
        shared.chmod(0o755)
        old = os.umask(0o022)
        try:
            entry = _entry(shared / "cache")
        finally:
            os.umask(old)
        nobody = pwd.getpwnam("nobody")
        pid = os.fork()
        if pid == 0:  # the child: another user, reading root's entry
            code = 1
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                other = Entry(entry.folder)
                ok = set(other.check(full=True)) == set(ARRAYS)
                ok = ok and all(np.array_equal(other.read(n), a) for n, a in ARRAYS.items())
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)


def test_cache_info_counts_what_a_killed_pass_left_and_clear_frees_it(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PARTBENCH_CACHE", str(root))
    _entry(root)
    script = textwrap.dedent(f"""
        import os, numpy as np
        from pathlib import Path
        from partbench.cache import ArrayWriter
        for folder in ({str(root / ("k" * 32))!r}, {str(root / ("u" * 32))!r}):
            w = ArrayWriter(Path(folder), "tokens")
            w.append(np.zeros((100, 10), np.float32))
            w._file.flush()
        os.kill(os.getpid(), 9)
    """)
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == -signal.SIGKILL
    live = ArrayWriter(root / ("w" * 32), "cls")  # a pass still writing: never counted nor freed
    live.append(np.zeros((10, 10), np.float32))
    live._file.flush()
    info = json.loads(CliRunner().invoke(cli, ["cache", "info", "--format", "json"]).output)
    left = {Path(x["path"]).name: x["bytes"] for x in info["leftovers"]}
    assert set(left) == {"u" * 32, next(p.name for p in (root / ("k" * 32)).glob(".tokens-*.tmp"))}
    assert sum(left.values()) == 2 * 4000
    out = CliRunner().invoke(cli, ["cache", "clear"])
    assert out.exit_code == 0 and not (root / ("u" * 32)).exists()
    assert live.path.exists()
    assert (
        json.loads(CliRunner().invoke(cli, ["cache", "info", "--format", "json"]).output)["leftovers"] == []
    )
    live.discard()


def test_a_full_disk_is_named_with_the_folder(tmp_path):
    script = textwrap.dedent(f"""
        import resource, signal, numpy as np
        from pathlib import Path
        from partbench.cache import ArrayWriter
        from partbench.errors import PartbenchError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        w = ArrayWriter(Path({str(tmp_path / "e")!r}), "tokens")
        try:
            for _ in range(10):
                w.append(np.zeros((100, 100), np.float32))
                w._file.flush()
        except PartbenchError as exc:
            print(exc)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert f"disk full at {tmp_path / 'e'}: File too large" in out.stdout, out.stdout + out.stderr


# --- float16 maps ---------------------------------------------------------------------


def test_maps_beyond_float16_are_kept_finite_and_maps_that_fit_are_unchanged(tmp_path):
    torch.manual_seed(0)
    maps = torch.randn(5, 7, 16) * 100
    maps[2, 3, 4] = 3e6  # a high-norm token
    maps[4, 0, 0] = -7e4
    fitted, scale = fit_float16(maps)
    assert scale.tolist() == [1.0, 1.0, 64.0, 1.0, 2.0]
    half = fitted.to(torch.float16)
    assert torch.isfinite(half).all()
    for i in (0, 1, 3):  # the bytes float16 alone gives: scores on such data do not move
        assert torch.equal(half[i], maps[i].to(torch.float16))
    entry = Entry(tmp_path / "e")
    files = {}
    for name, a in (
        ("tokens", half.numpy()),
        ("tokens:scale", scale.numpy()),
        ("sample_index", np.arange(5)),
        ("labels", np.zeros(5, np.int64)),
    ):
        w = ArrayWriter(entry.folder, name)
        w.append(a)
        files[name] = w.close()
    entry.commit(files, {})
    got = unscaled(entry, "tokens")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, maps.numpy(), rtol=1e-3, atol=0.05)
    # A subset cut from the entry carries the scales along.
    child = Entry(tmp_path / "child")
    cut(entry, child, ["tokens"], [], [2, 0], {}, "empty")
    np.testing.assert_allclose(unscaled(child, "tokens"), maps.numpy()[[2, 0]], rtol=1e-3, atol=0.05)
    assert F16_MAX == 65504.0


# --- datasets: content, not just sizes ---------------------------------------------------


def test_an_image_edited_in_place_at_the_same_size_changes_the_fingerprint(tmp_path):
    root = trees.cub_tree(tmp_path / "CUB_200_2011")
    before = CUB200(root).fingerprint()
    assert CUB200(root).fingerprint() == before  # a warm start: the same
    image = root / "images" / trees.CUB_IMAGES[1][0]
    data = bytearray(image.read_bytes())
    size = len(data)
    data[size // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    assert image.stat().st_size == size
    assert CUB200(root).fingerprint() != before


def test_the_stat_index_reads_only_files_whose_stat_changed(tmp_path):
    root = trees.cub_tree(tmp_path / "CUB_200_2011")
    CUB200(root).fingerprint()
    index = StatIndex(root)
    images = sorted((root / "images").rglob("*.jpg"))
    for p in images:
        index.digest(p, p.relative_to(root).as_posix())
    assert index.hashed == 0
    os.utime(images[0], ns=(images[0].stat().st_atime_ns, images[0].stat().st_mtime_ns + 1))
    index.digest(images[0], images[0].relative_to(root).as_posix())
    assert index.hashed == 1


def test_synparts_renders_of_another_seed_under_this_ones_name_are_drawn_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path))
    other = synparts.SynParts(seed=1, train=3, test=2)
    other.prepare()
    mine = synparts.SynParts(seed=0, train=3, test=2)
    mine.renders_path("test").write_bytes(other.renders_path("test").read_bytes())
    with pytest.warns(UserWarning, match="was drawn with .*'seed': 1"):
        got = synparts.SynParts(seed=0, train=3, test=2).samples("test")[1]
    assert np.array_equal(got.image, synparts.render(0, "test", 1).image)
    with pytest.warns(UserWarning, match="was drawn with"):
        mine.prepare()  # replaces the foreign file with this seed's renders
    redrawn = synparts.Renders.load(
        mine.renders_path("test"), 2, 96, synparts.render_params(0, "test", 2, 96)
    )
    assert redrawn is not None and np.array_equal(redrawn.images[1], got.image)


def test_synparts_keeps_the_fingerprint_the_committed_leaderboards_runs_were_stored_with():
    committed = Path(__file__).parent.parent / "leaderboard" / "mini.json"
    stored = set(re.findall(r'"fingerprint": "([0-9a-f]+)"', committed.read_text()))
    assert stored == {synparts.SynParts().fingerprint()}


def test_synparts_renders_whose_pixels_changed_are_drawn_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path))
    ds = synparts.SynParts(train=3, test=2)
    ds.prepare()
    path = ds.renders_path("test")
    with np.load(path) as z:
        fields = {k: z[k] for k in z.files}
    fields["images"] = 255 - fields["images"]
    with path.open("wb") as f:
        np.savez(f, **fields)
    with pytest.warns(UserWarning, match="does not match its recorded digest"):
        got = synparts.SynParts(train=3, test=2).samples("test")[0]
    assert np.array_equal(got.image, synparts.render(0, "test", 0).image)


# --- fetch work folders, batch sizes -----------------------------------------------------


def test_a_killed_fetchs_work_folder_is_removed_and_a_live_ones_kept(tmp_path):
    dead, live, new = (tmp_path / f".cub200-{k}.fetch" for k in ("abc", "def", "ghi"))
    for folder in (dead, live, new):
        (folder / "unpacked").mkdir(parents=True)
        (folder / "cub200.archive").write_bytes(b"x" * 1000)
    for folder in (dead, live):  # last written a while ago
        os.utime(folder, (0, os.stat(folder).st_mtime - 2 * fetch_mod.GRACE_SECONDS))
    fd = os.open(live, os.O_RDONLY)  # as a fetch in progress holds it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert fetch_mod.remove_abandoned(tmp_path) == [dead]
        assert not dead.exists() and live.exists() and new.exists()
    finally:
        os.close(fd)


def test_a_batch_size_beyond_any_forward_is_named(tmp_path):
    out = CliRunner().invoke(
        cli,
        ["run", "-e", "mini-random", "-t", "object-linear", "--batch-size", str(10**20),
         "--db", f"sqlite:///{tmp_path / 'c.db'}"],
    )  # fmt: skip
    assert out.exit_code != 0 and f"--batch-size must lie in 1..65536, got {10**20}" in out.output


class _HighNorm(Encoder):
    """Stage maps of which some items hold values past float16's range, as the high-norm tokens
    of large ViTs do: kept as plain float16 they became infinity."""

    def __init__(self, name: str):
        torch.manual_seed(0)
        self.name, self.family, self.weights_id = name, "none", "random-init:seed=0"
        self.input_size = 32
        self.module = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.stages = (Stage(0, "conv", 8, 8),)
        self.pooled_kind = "avgpool"

    def forward(self, images, stages=()):
        m = self.module(images)
        big = m.clone()
        big[::3, 0, 0, 0] = 1e6  # every third item has one huge activation
        return EncoderOutput(pooled=m.mean((2, 3)), final=m, stages={0: big})


def test_a_run_whose_stage_maps_exceed_float16_scores_them_finite(tmp_path):
    from partbench.plugins import registry
    from partbench.runner import RunOptions, run
    from partbench.specs import EncoderSpec
    from partbench.store import Store

    reg = registry()
    reg.encoders["high-norm"] = EncoderSpec("high-norm", lambda r: _HighNorm(r.name), "none", plugin="test")
    opts = RunOptions(limit=24, workers=0, batch_size=16, options=("epochs=2", "iterations=5"))
    (outcome,) = run(
        reg, Store(f"sqlite:///{tmp_path / 'c.db'}"), ["high-norm"], ["part-seg"], opts, say=print
    )
    assert outcome.status == "done", outcome.error
    assert np.isfinite(outcome.value.value)
    (entry, *_) = [
        e for e in FeatureCache(cache_mod.cache_root()).entries() if "stages@0:scale" in e.arrays()
    ]
    scale = np.asarray(entry.read("stages@0:scale"))
    assert (scale == 16).any() and (scale == 1).any() and set(scale.tolist()) == {1.0, 16.0}  # 1e6 / 16 fits
