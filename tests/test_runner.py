"""The runner as plan, execute, record: the feature cache, streaming extraction, checked
encoder outputs, typed options, and one failure failing one run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from partbench.cache import FeatureCache, cache_root
from partbench.cli import cli
from partbench.encoders.base import Encoder, EncoderOutput, Stage
from partbench.errors import PartbenchError
from partbench.plugins import registry
from partbench.runner import RunOptions, run
from partbench.specs import EncoderSpec
from partbench.store import Store


class Tiny(Encoder):
    """A two-stage convolutional encoder whose forward can be made to misbehave."""

    def __init__(self, name: str, mode: str = "ok", seed: int = 0):
        torch.manual_seed(seed)
        self.name, self.family, self.weights_id = name, "none", f"random-init:seed={seed}"
        self.input_size = 32
        self.module = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.GELU(), torch.nn.Conv2d(8, 12, 2, stride=2)
        )
        self.stages = (Stage(0, "0", 8, 4), Stage(1, "2", 12, 8))
        self.pooled_kind = "avgpool"
        self.mode = mode
        self.calls = 0

    def forward(self, images, stages=()):
        self.calls += 1
        s0 = self.module[1](self.module[0](images))
        final = self.module[2](s0)
        out = EncoderOutput(pooled=final.mean((2, 3)), final=final, stages={0: s0, 1: final})
        if self.mode == "nan" and self.calls == 2:
            out.pooled = out.pooled.clone()
            out.pooled[0] = float("nan")  # one item of the second batch
        elif self.mode == "float64":
            out.pooled = out.pooled.double()
        elif self.mode == "short":
            out.pooled = out.pooled[1:]
        elif self.mode == "numpy":
            out.pooled = out.pooled.detach().numpy()
        elif self.mode == "tuple":
            return (final, s0)
        return out


def _registry_with(*encoders: tuple[str, str]):
    reg = registry()
    for name, mode in encoders:
        reg.encoders[name] = EncoderSpec(
            name, lambda request, _m=mode: Tiny(request.name, _m), "none", plugin="test-plugin"
        )
    return reg


def _opts(**kw) -> RunOptions:
    base = {"limit": 24, "workers": 0, "batch_size": 16, "options": ("epochs=2", "iterations=5")}
    return RunOptions(**{**base, **kw})


def _store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'runs.db'}")


TASKS = ("part-retrieval", "part-linear", "object-linear")


def test_a_second_task_on_cached_features_runs_no_encoder_pass_and_scores_the_same(tmp_path):
    reg = _registry_with(("tiny", "ok"))
    store = _store(tmp_path)
    first = run(reg, store, ["tiny"], ["part-retrieval"], _opts())
    assert [o.status for o in first] == ["done"] and first[0].timing["encoder_passes"] == 1
    # A scoring option and a second task reading the same outputs: no pass at all.
    second = run(reg, store, ["tiny"], ["part-retrieval"], _opts(options=("include_self=false", "epochs=2")))
    assert second[0].status == "done" and second[0].cached and second[0].timing["encoder_passes"] == 0
    # Another pooled feature: the first pass computed every pooled output the encoder has.
    other = run(reg, store, ["tiny"], ["part-retrieval"], _opts(options=("feature=cls", "epochs=2")))
    assert other[0].status == "done" and other[0].timing["encoder_passes"] == 0
    # --no-cache recomputes; the features, hence the scores, are the same.
    again = run(reg, store, ["tiny"], ["part-retrieval"], _opts(cache=False, force=True))
    assert again[0].timing["encoder_passes"] == 1
    assert again[0].value == first[0].value
    entries = FeatureCache(cache_root()).entries()
    assert len(entries) == 1 and entries[0].info()["encoder"] == "tiny"
    assert isinstance(entries[0].read("embedding"), np.memmap)


def test_worker_processes_give_the_features_a_single_process_gives(tmp_path):
    reg = _registry_with(("tiny", "ok"))
    one = run(reg, _store(tmp_path / "a"), ["tiny"], list(TASKS), _opts(workers=0, cache=False))
    two = run(reg, _store(tmp_path / "b"), ["tiny"], list(TASKS), _opts(workers=2, cache=False))
    assert [o.value for o in one] == [o.value for o in two]
    assert all(o.status == "done" for o in one + two)


def test_an_encoder_that_returns_non_finite_features_fails_the_runs_reading_them(tmp_path):
    reg = _registry_with(("nan-enc", "nan"))
    store = _store(tmp_path)
    outcomes = run(reg, store, ["nan-enc"], ["part-linear", "part-retrieval"], _opts())
    status = {o.task: o for o in outcomes}
    # part-linear reads the pooled vector, which has a NaN; retrieval reads the final map.
    assert status["part-linear"].status == "failed"
    assert "non-finite" in status["part-linear"].error and "'cls'" in status["part-linear"].error
    assert "1 of" in status["part-linear"].error and "nan-enc" in status["part-linear"].error
    assert status["part-retrieval"].status == "done"
    stored = {r.task: r for r in store.runs()}
    assert stored["part-linear"].status == "failed" and stored["part-retrieval"].status == "done"


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("float64", "float32, float16 or bfloat16"),
        ("short", "items for a batch"),
        ("numpy", "must be a torch.Tensor"),
        ("tuple", "must return an EncoderOutput"),
    ],
)
def test_malformed_encoder_outputs_are_one_line_naming_the_plugin(tmp_path, mode, expect):
    reg = _registry_with(("odd", mode))
    outcomes = run(reg, _store(tmp_path), ["odd"], ["part-linear"], _opts())
    assert outcomes[0].status == "failed"
    assert expect in outcomes[0].error and "test-plugin" in outcomes[0].error
    assert "\n" not in outcomes[0].error


def test_any_exception_in_a_task_fails_that_run_only_and_keeps_its_traceback(tmp_path, monkeypatch):
    from partbench.tasks.probes import Probe

    def broken(self, *a, **k):
        raise ZeroDivisionError("the probe divided by zero")

    monkeypatch.setattr(Probe, "evaluate", broken)
    store = _store(tmp_path)
    outcomes = run(_registry_with(("tiny", "ok")), store, ["tiny"], list(TASKS), _opts())
    status = {o.task: o.status for o in outcomes}
    assert status == {"part-retrieval": "done", "part-linear": "failed", "object-linear": "failed"}
    failed = [r for r in store.runs() if r.status == "failed"]
    assert all("ZeroDivisionError: the probe divided by zero" in r.error for r in failed)
    assert all("Traceback" in (r.traceback or "") for r in failed)


def test_an_encoder_that_fails_to_load_fails_its_runs_and_the_next_encoder_runs(tmp_path):
    reg = _registry_with(("tiny", "ok"))

    def explode(request):
        raise KeyError("weights/missing.bin")

    reg.encoders["broken"] = EncoderSpec("broken", explode, "none", plugin="test-plugin")
    store = _store(tmp_path)
    outcomes = run(reg, store, ["broken", "tiny"], ["part-retrieval"], _opts())
    assert [(o.encoder, o.status) for o in outcomes] == [("broken", "failed"), ("tiny", "done")]
    assert "KeyError" in outcomes[0].error
    assert {r.encoder: r.status for r in store.runs()} == {"broken": "failed", "tiny": "done"}


def test_an_interrupted_pass_leaves_nothing_a_later_run_would_read(tmp_path, monkeypatch):
    import partbench.extraction.stream as extraction

    reg = _registry_with(("tiny", "ok"))
    real = extraction.encoder_outputs
    seen = {"n": 0}

    def interrupt_on_second_batch(*a, **k):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(extraction, "encoder_outputs", interrupt_on_second_batch)
    store = _store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(reg, store, ["tiny"], ["part-retrieval"], _opts())
    assert [r.status for r in store.runs()] == ["interrupted"]
    for entry in FeatureCache(cache_root()).entries():
        assert "embedding" not in entry.arrays()
    leftovers = [p for p in cache_root().rglob("*.tmp")]
    assert leftovers == []
    monkeypatch.setattr(extraction, "encoder_outputs", real)
    outcomes = run(reg, store, ["tiny"], ["part-retrieval"], _opts())
    assert outcomes[0].status == "done" and outcomes[0].timing["encoder_passes"] == 1


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("epochs=0", "epochs=0: must be at least 1"),
        ("part-linear.lr=nan", "not a finite number"),
        ("part-linear.lr=inf", "not a finite number"),
        ("part-linear.lr=-1", "must be above 0"),
        ("part-linear.batch_size=0", "must be at least 1"),
        ("include_self=maybe", "expected true or false"),
        ("lr=0.5", "mean different things"),
    ],
)
def test_option_values_outside_their_range_are_refused_before_anything_loads(tmp_path, option, message):
    reg = _registry_with(("tiny", "ok"))
    with pytest.raises(PartbenchError, match=message.replace("(", r"\(")):
        run(reg, _store(tmp_path), ["tiny"], ["part", "object"], _opts(options=(option,)))


@pytest.mark.parametrize("seed", [-1, 2**40])
def test_seeds_outside_the_accepted_range_are_refused(tmp_path, seed):
    with pytest.raises(PartbenchError, match="--seed must lie in"):
        run(_registry_with(("tiny", "ok")), _store(tmp_path), ["tiny"], ["part-linear"], _opts(seed=seed))


def test_each_run_stores_its_per_item_results_chance_and_end_to_end_timing(tmp_path):
    store = _store(tmp_path)
    outcomes = run(_registry_with(("tiny", "ok")), store, ["tiny"], ["part-seg", "object-linear"], _opts())
    assert all(o.status == "done" for o in outcomes)
    for r in store.runs():
        items = store.items(r.id)
        assert items, r.task
        assert r.chance and all(0 <= v <= 100 for v in r.chance.values())
        for key in ("images_per_second", "end_to_end_images_per_second", "wall_seconds", "peak_rss_mb"):
            assert key in r.timing
        assert r.config["precision"] == "fp32"  # auto is fp32 on a CPU
    seg = next(r for r in store.runs() if r.task == "part-seg")
    # The tiny encoder's stage maps have strides 4 and 8: resampled to one grid (stride 8's:
    # nearest 16), concatenated.
    assert seg.config["views"]["train"]["stages"] == [0, 1]


def test_a_pass_stores_where_its_wall_clock_went(tmp_path):
    outcome = run(_registry_with(("tiny", "ok")), _store(tmp_path), ["tiny"], ["part-retrieval"], _opts())[0]
    (figures,) = outcome.timing["passes"].values()
    (entry,) = FeatureCache(cache_root()).entries()
    outputs = [a for a in entry.arrays() if a not in ("labels", "sample_index")]
    written = sum(entry.read(a).nbytes for a in outputs)
    assert written > 0 and figures["written_mb"] * 2**20 == written
    waits = ("loader_wait_seconds", "writer_wait_seconds", "device_to_host_seconds", "write_seconds")
    assert all(figures[k] >= 0 for k in waits)
    # The main thread's waits and the timed forwards happen one after another within the pass.
    main_thread = figures["loader_wait_seconds"] + figures["writer_wait_seconds"] + figures["forward_seconds"]
    assert main_thread <= figures["wall_seconds"]


def test_cache_info_and_clear_from_the_command_line(tmp_path):
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    args = ["run", "-e", "mini-random", "-t", "object-linear", "--limit", "8", "--workers", "0"]
    assert runner.invoke(cli, [*args, "-o", "epochs=1", "--db", db]).exit_code == 0
    info = runner.invoke(cli, ["cache", "info", "--format", "json"])
    assert info.exit_code == 0, info.output
    entries = json.loads(info.output)["entries"]
    assert {e["split"] for e in entries} == {"train images", "test images"}
    assert all(e["encoder"] == "mini-random" and e["bytes"] > 0 for e in entries)
    # SynParts renders kept by a study, under this version's name and an earlier one's.
    from partbench import paths

    names = ("synparts-v1-0-test-96px-1600.npz", "synparts-0f3a-test.npz")
    kept = [paths.home() / "cache" / n for n in names]
    for f in kept:
        f.write_bytes(b"x" * 1000)
    listed = json.loads(runner.invoke(cli, ["cache", "info", "--format", "json"]).output)["synparts_renders"]
    assert sorted(r["file"] for r in listed) == sorted(map(str, kept))
    assert "SynParts renders: 2 files" in runner.invoke(cli, ["cache", "info"]).output
    cleared = runner.invoke(cli, ["cache", "clear", "--encoder", "someone-else"])
    assert "Removed 0 entries" in cleared.output and all(f.exists() for f in kept)
    cleared = runner.invoke(cli, ["cache", "clear"])
    assert "Removed 2 entries" in cleared.output and "Removed 2 SynParts render files" in cleared.output
    assert not any(f.exists() for f in kept)
    assert json.loads(runner.invoke(cli, ["cache", "info", "--format", "json"]).output)["entries"] == []


def test_run_config_digest_ignores_what_only_changes_timings():
    from partbench.runner import RunConfig

    base = RunConfig({"e": 1}, {"t": 1}, {"d": 1}, {}, 0, None, "fp32", 1, False, 64, "cpu", 2)
    moved = dataclasses.replace(base, batch_size=8, device="cuda:0 (H100)", workers=16)
    assert base.digest == moved.digest
    assert base.digest != dataclasses.replace(base, precision="bf16").digest
    assert base.digest != dataclasses.replace(base, task={"t": 2}).digest


@pytest.mark.slow
def test_compiled_encoder_keeps_compile_time_apart_and_scores_as_eager(tmp_path):
    reg = _registry_with(("tiny", "ok"))
    eager = run(reg, _store(tmp_path / "e"), ["tiny"], ["part-retrieval"], _opts(limit=12, cache=False))
    compiled = run(reg, _store(tmp_path / "c"), ["tiny"], ["part-retrieval"], _opts(limit=12, compile=True))
    timing = compiled[0].timing
    assert compiled[0].status == "done" and timing["compile_seconds"] == timing["warmup_seconds"] > 0
    # Compiled kernels may sum in another order: the same score to well within its interval.
    assert compiled[0].value.value == pytest.approx(eager[0].value.value, abs=0.5)


def _cub_entries() -> dict[str, object]:
    return {e.info()["split"]: e for e in FeatureCache(cache_root()).entries()}


def test_the_test_split_is_cut_from_the_all_split_that_holds_it(tmp_path, monkeypatch):
    import dataset_trees as trees

    root = trees.cub_tree(tmp_path / "cub")
    reg = _registry_with(("tiny", "ok"))
    opts = _opts(limit=None, dataset="cub200", data_root=root)
    # Retrieval reads every image; the probes' test views read a subset of them with the same
    # transform, and the attentive probe wants token maps, which retrieval does not.
    tasks = ["part-retrieval", "part-linear", "part-attentive"]
    outcomes = {o.task: o for o in run(reg, _store(tmp_path), ["tiny"], tasks, opts)}
    assert all(o.status == "done" for o in outcomes.values())
    entries = _cub_entries()
    assert set(entries) == {"all", "train", "test"}
    assert entries["test"].info()["cut_from"] == entries["all"].folder.name
    assert "cut_from" not in entries["all"].info() and "cut_from" not in entries["train"].info()
    assert "tokens" in entries["all"].arrays()  # written once, for both views
    for task in ("part-linear", "part-attentive"):
        assert outcomes[task].timing["encoder_passes"] == 1  # the train split alone

    # The same views encoded directly (another cache) hold the same rows in the same order.
    monkeypatch.setenv("PARTBENCH_CACHE", str(tmp_path / "direct"))
    alone = run(reg, _store(tmp_path / "d"), ["tiny"], tasks[1:], opts)
    assert [o.timing["encoder_passes"] for o in alone] == [2, 2]
    assert [o.value for o in alone] == [outcomes[t].value for t in tasks[1:]]
    direct = _cub_entries()["test"]
    assert "cut_from" not in direct.info()
    assert set(entries["test"].arrays()) == set(direct.arrays())
    for name in ("labels", "sample_index"):
        np.testing.assert_array_equal(entries["test"].read(name), direct.read(name))
    for name in direct.arrays():
        np.testing.assert_allclose(entries["test"].read(name), direct.read(name), rtol=1e-3, atol=1e-5)


def test_where_maps_are_not_taken_on_only_a_pooled_test_view_is_cut(tmp_path, monkeypatch):
    import dataset_trees as trees

    from partbench.runner import passes

    monkeypatch.setattr(passes, "folds_maps", lambda device: False)  # what a GPU run does
    root = trees.cub_tree(tmp_path / "cub")
    reg = _registry_with(("tiny", "ok"))
    opts = _opts(limit=None, dataset="cub200", data_root=root)
    tasks = ["part-retrieval", "part-attentive"]
    outcomes = {o.task: o for o in run(reg, _store(tmp_path), ["tiny"], tasks, opts)}
    assert outcomes["part-attentive"].timing["encoder_passes"] == 2  # its tokens are encoded
    entries = _cub_entries()
    assert "cut_from" not in entries["test"].info() and "tokens" not in entries["all"].arrays()
    monkeypatch.setenv("PARTBENCH_CACHE", str(tmp_path / "pooled"))
    linear = run(reg, _store(tmp_path / "p"), ["tiny"], ["part-retrieval", "part-linear"], opts)
    assert linear[1].timing["encoder_passes"] == 1
    assert "cut_from" in _cub_entries()["test"].info()


def test_a_cached_all_split_serves_a_later_runs_test_split(tmp_path):
    import dataset_trees as trees

    root = trees.cub_tree(tmp_path / "cub")
    reg = _registry_with(("tiny", "ok"))
    opts = _opts(limit=None, dataset="cub200", data_root=root)
    run(reg, _store(tmp_path), ["tiny"], ["object-retrieval"], opts)
    assert set(_cub_entries()) == {"all"}
    later = run(reg, _store(tmp_path), ["tiny"], ["object-linear"], opts)
    assert later[0].status == "done" and later[0].timing["encoder_passes"] == 1
    entries = _cub_entries()
    assert entries["test"].info()["cut_from"] == entries["all"].folder.name
    shown = json.loads(CliRunner().invoke(cli, ["cache", "info", "--format", "json"]).output)["entries"]
    assert sorted(e["split"] for e in shown) == ["all images", "test images, cut from all", "train images"]
    # --limit keeps the first images of each split: the test split's first two are not all
    # among the all split's first two, so nothing is cut and the pass runs.
    limited = run(
        reg,
        _store(tmp_path),
        ["tiny"],
        ["object-retrieval", "object-linear"],
        _opts(limit=2, dataset="cub200", data_root=root),
    )
    assert all(o.status == "done" for o in limited)
    assert limited[1].timing["encoder_passes"] == 2


def test_a_cut_keeps_each_samples_items_and_label_maps_in_the_subsets_order(tmp_path):
    from partbench.cache import ArrayWriter, Entry
    from partbench.extraction import read_masks
    from partbench.subsets import cut

    parent, child = Entry(tmp_path / "parent"), Entry(tmp_path / "child")
    maps = [np.full((h, w), k, dtype=np.uint8) for k, (h, w) in enumerate([(2, 3), (1, 1), (4, 2), (3, 3)])]
    arrays = {
        "cls": np.arange(10, dtype=np.float32).reshape(5, 2),
        "labels": np.array([7, 8, 9, 6, 5]),
        "sample_index": np.array([0, 0, 1, 3, 3]),  # sample 2 gave no items
        "masks:part-masks:full": np.concatenate([m.ravel() for m in maps]),
        "masks:part-masks:full:shapes": np.array([m.shape for m in maps]),
    }
    files = {}
    for name, a in arrays.items():
        w = ArrayWriter(parent.folder, name)
        w.append(a)
        files[name] = w.close()
    parent.commit(files, {"grid": [1, 1], "split": "all"})

    timing = cut(parent, child, ["cls"], ["masks:part-masks:full"], [3, 1, 2], {"split": "test"}, "empty")
    assert timing["encoder_passes"] == 0 and timing["cut_from"] == "parent"
    np.testing.assert_array_equal(child.read("cls"), [[6, 7], [8, 9], [4, 5]])
    np.testing.assert_array_equal(child.read("labels"), [6, 5, 9])
    np.testing.assert_array_equal(child.read("sample_index"), [0, 0, 1])
    got = read_masks(child, "masks:part-masks:full")
    assert [m.tolist() for m in got] == [maps[k].tolist() for k in (3, 1, 2)]
    assert child.info()["cut_from_split"] == "all" and child.info()["grid"] == [1, 1]
    with pytest.raises(PartbenchError, match="empty"):
        cut(parent, Entry(tmp_path / "none"), ["cls"], [], [2], {}, "empty")


def test_stage_all_stores_one_run_per_stage_and_the_leaderboard_draws_their_curve(tmp_path):
    from partbench.ranking.boards import build
    from partbench.render.html import render as html
    from partbench.render.terminal import leaderboard_text

    reg = _registry_with(("tiny", "ok"))
    store = _store(tmp_path)
    outcomes = run(reg, store, ["tiny"], ["part-discovery"], _opts(options=("stage=all",)))
    assert [o.status for o in outcomes] == ["done", "done"]
    runs = store.runs(status="done")
    assert sorted(r.config["task"]["options"]["stage"] for r in runs) == [0, 1]
    assert len({json.dumps(r.config, sort_keys=True) for r in runs}) == 2  # two configurations
    # Asked again as a list, every stage is found stored.
    again = run(reg, store, ["tiny"], ["part-discovery"], _opts(options=("part-discovery.stage=1,0",)))
    assert [o.status for o in again] == ["skipped", "skipped"]

    boards = build(store.runs(), registry=reg)
    (curve,) = boards[0].curves
    assert curve.task == "part-discovery" and curve.depths == [0.5, 1.0]
    by_stage = {p.stage: p.value for p in curve.lines["tiny"]}
    assert by_stage == {r.config["task"]["options"]["stage"]: r.headline.value for r in runs}
    text = leaderboard_text(boards, width=100)
    assert "layer curve · part-discovery on synparts" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("tiny") and "0.5" not in line)
    assert row.split()[1:] == [f"{by_stage[0]:.1f}", f"{by_stage[1]:.1f}"]
    page = html(boards)
    assert page.count('class="line" data-encoder="tiny"') == 1 and page.count('data-stage="') == 2


def test_a_single_stage_run_draws_no_curve_and_a_bad_stage_list_is_refused(tmp_path):
    from partbench.ranking.boards import build

    reg = _registry_with(("tiny", "ok"))
    store = _store(tmp_path)
    run(reg, store, ["tiny"], ["part-discovery"], _opts(options=("stage=1",)))
    assert build(store.runs(), registry=reg)[0].curves == []
    with pytest.raises(PartbenchError, match=r"part-discovery\.stage=0,x"):
        run(reg, store, ["tiny"], ["part-discovery"], _opts(options=("stage=0,x",)))


def test_a_run_on_generated_data_draws_it_once_and_keeps_it_for_the_next(tmp_path, monkeypatch):
    from partbench.datasets import synparts

    reg = _registry_with(("tiny", "ok"))
    small = ("train=6", "test=5")
    limited = run(reg, _store(tmp_path / "a"), ["tiny"], ["object-retrieval"], _opts(dataset_options=small))
    assert limited[0].status == "done"
    kept = [synparts.renders_path(0, split, n, 96) for split, n in (("train", 6), ("test", 5))]
    assert not any(p.exists() for p in kept)  # a --limit run reads a few samples: none kept
    # Not --limit: every sample is drawn before the pass and kept beside the features.
    shown: list[tuple[str, str]] = []

    class Progress:  # what the CLI's rich progress is asked to show
        def add_task(self, description, total=None):
            shown.append(("add", description))
            return description

        def remove_task(self, task_id):
            shown.append(("remove", task_id))

        def advance(self, task_id, n):
            pass

    first = run(
        reg,
        _store(tmp_path / "b"),
        ["tiny"],
        ["object-retrieval"],
        _opts(limit=None, dataset_options=small),
        progress=Progress(),
    )
    assert first[0].status == "done" and all(p.is_file() for p in kept)
    # A line says what it waits for while the data is drawn, before the pass's own.
    assert shown[:2] == [("add", "synparts data"), ("remove", "synparts data")] and len(shown) > 2

    def no_drawing(*args, **kwargs):
        raise AssertionError("a kept sample was drawn again")

    # The next command (another process: a fresh dataset object), its features cached elsewhere,
    # encodes the kept samples, draws none, and scores the same.
    monkeypatch.setattr(synparts, "render", no_drawing)
    monkeypatch.setenv("PARTBENCH_CACHE", str(tmp_path / "other-cache"))
    again = run(
        reg, _store(tmp_path / "c"), ["tiny"], ["object-retrieval"], _opts(limit=None, dataset_options=small)
    )
    assert again[0].status == "done" and again[0].value == first[0].value


def test_generated_data_that_cannot_be_kept_is_drawn_as_read(tmp_path, monkeypatch):
    from partbench.datasets import synparts

    def full(self, path, params):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(synparts.Renders, "save", full)
    said: list[str] = []
    opts = _opts(limit=None, dataset_options=("train=6", "test=5"))
    outcomes = run(
        _registry_with(("tiny", "ok")),
        _store(tmp_path),
        ["tiny"],
        ["object-retrieval"],
        opts,
        say=said.append,
    )
    assert outcomes[0].status == "done"
    assert len(said) == 1 and "synparts: its data is not kept" in said[0] and "No space left" in said[0]


def test_stopped_while_its_data_is_drawn_a_run_is_left_interrupted_and_nothing_half_kept(
    tmp_path, monkeypatch
):
    from partbench import paths
    from partbench.datasets import synparts

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synparts, "_render_range", stopped)
    store = _store(tmp_path)
    opts = _opts(limit=None, dataset_options=("train=6", "test=5"))
    with pytest.raises(KeyboardInterrupt):
        run(_registry_with(("tiny", "ok")), store, ["tiny"], ["object-retrieval"], opts)
    assert [r.status for r in store.runs()] == ["interrupted"]
    assert not list((paths.home() / "cache").glob("synparts-*"))  # no render file, whole or part
