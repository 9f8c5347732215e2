"""``partbench run --dry-run``: the passes a run would make, told before it runs, with the
bytes each writes to the cache, what the store and the cache already answer and, once this
machine has timed the encoder, the time; nothing is stored or cached by it."""

from __future__ import annotations

import json
from pathlib import Path

import dataset_trees as trees
import pytest
from click.testing import CliRunner

from partbench.cli import cli

QUICK = ["-o", "epochs=3", "-o", "iterations=5", "--workers", "0"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def dry_run(*args: str) -> list[dict]:
    result = invoke("run", *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def cache_bytes(home: Path) -> dict[str, int]:
    """Entry folder -> bytes of the arrays its index records (what the passes wrote)."""
    out = {}
    for meta in (home / "cache").glob("*/meta.json"):
        arrays = json.loads(meta.read_text())["arrays"]
        out[meta.parent.name] = sum(a["bytes"] for a in arrays.values())
        assert sum(a["bytes"] for a in arrays.values()) == sum(
            (meta.parent / a["file"]).stat().st_size for a in arrays.values()
        )
    return out


def predicted(forecast: list[dict]) -> dict[str, int]:
    return {
        p["entry"]: p["bytes"]
        for f in forecast
        for e in f["encoders"]
        for p in e["passes"]
        if p["action"] != "cached"
    }


def check_forecast_then_run(home: Path, db_path: Path, args: list[str]) -> list[dict]:
    db = f"sqlite:///{db_path}"
    forecast = dry_run(*args, "--db", db)
    # Nothing stored, nothing cached: the database is not even created.
    assert not db_path.exists() and not list((home / "cache").glob("*/meta.json"))
    runs = forecast[0]["encoders"][0]["runs"]
    assert runs and all(r["will_run"] and r["stored_run"] is None for r in runs)
    passes = forecast[0]["encoders"][0]["passes"]
    assert passes and all(p["action"] == "encode" or p["action"].startswith("cut from") for p in passes)
    for p in passes:
        assert p["bytes"] == sum(p["arrays"].values()) > 0
        assert p["counted"] == "exact"

    result = invoke("run", *args, "--db", db)
    assert result.exit_code == 0, result.output
    written = cache_bytes(home)
    # Every pass wrote exactly the bytes predicted, entry by entry, and no other entry exists.
    assert written == predicted(forecast)

    # Again: the store answers every run and the cache every pass; still nothing is written.
    before = db_path.stat().st_mtime_ns
    again = dry_run(*args, "--db", db)
    assert db_path.stat().st_mtime_ns == before and cache_bytes(home) == written
    assert all(r["stored_run"] is not None and not r["will_run"] for r in again[0]["encoders"][0]["runs"])
    assert again[0]["encoders"][0]["passes"] == []
    forced = dry_run(*args, "--force", "--db", db)
    assert {p["action"] for p in forced[0]["encoders"][0]["passes"]} == {"cached"}
    assert forced[0]["encoders"][0]["bytes"] == 0
    return forecast


def test_synparts_forecast_matches_what_the_run_writes(tmp_path, isolated_home):
    args = [
        "-e",
        "mini-mae",
        "-t",
        "part-retrieval",
        "-t",
        "object-linear",
        "-t",
        "part-seg",
        "--limit",
        "12",
    ]
    forecast = check_forecast_then_run(isolated_home, tmp_path / "r.db", [*args, *QUICK])
    (enc,) = forecast[0]["encoders"]
    assert enc["weights_id"].startswith("sha256:")
    memory = [p["memory"] for p in enc["passes"] if p["action"] == "encode"]
    assert memory and all(m["host_mb"] > 0 for m in memory)
    assert enc["seconds"] is None  # never timed here before

    # The run above timed this encoder on this device: a new configuration (another limit)
    # is predicted from that run's end-to-end rate.
    db = f"sqlite:///{tmp_path / 'r.db'}"
    later = dry_run("-e", "mini-mae", "-t", "part-retrieval", "--limit", "10", *QUICK, "--db", db)
    (p,) = later[0]["encoders"][0]["passes"]
    runs = json.loads(invoke("runs", "--format", "json", "--db", db).output)
    timer = next(r for r in runs if r["id"] == p["timed_by_run"])
    rate = timer["timing"]["images"] / timer["timing"]["wall_seconds"]
    assert p["seconds"] == pytest.approx(p["items"] / rate)

    text = invoke("run", "-e", "mini-mae", "-t", "part-retrieval", "--limit", "10", "--dry-run", "--db", db)
    assert text.exit_code == 0 and "pass test crops (test): encode" in text.output
    assert "Dry run: nothing was run, stored or cached." in text.output


def test_official_cub_tree_forecast_matches_what_the_run_writes(tmp_path, isolated_home):
    root = trees.cub_tree(tmp_path / "cub")
    # The part tasks' test crops are cut from the retrieval's pass over every image.
    crops = ["-t", "part-retrieval", "-t", "part-linear", "-t", "part-attentive"]
    args = ["-e", "random-vit", *crops, "-t", "object-retrieval"]
    forecast = check_forecast_then_run(
        isolated_home, tmp_path / "r.db", [*args, "-d", "cub200", "--data-root", str(root), *QUICK]
    )

    actions = [p["action"] for p in forecast[0]["encoders"][0]["passes"]]
    assert "cut from the all crops pass" in actions and actions.count("encode") == 3


def test_windowed_segmentation_forecast_matches_what_the_run_writes(tmp_path, isolated_home):
    """At a window other than the encoder's size (80 px for a 64 px mini ViT, its position
    embeddings resampled): the items are windows and each map is the larger grid's."""
    args = ["-e", "mini-mae", "-t", "part-seg", "-o", "window=80", "-o", "input_size=96", "--limit", "6"]
    forecast = check_forecast_then_run(isolated_home, tmp_path / "r.db", [*args, *QUICK])
    passes = {p["transform"]: p for p in forecast[0]["encoders"][0]["passes"]}
    # Training reads each image's centre window; testing slides 80 px windows over the 96 px
    # image at stride 53 (two thirds of 80): two rows of two.
    assert passes["crop-96-80"]["items"] == 6 and passes["slide-96-80-53"]["items"] == 4 * 6
    default = dry_run("-e", "mini-mae", "-t", "part-seg", "--limit", "6", *QUICK)
    (test,) = [p for p in default[0]["encoders"][0]["passes"] if p["split"] == "test"]
    # The stage maps of a window: a 10 x 10 grid against the 8 x 8 of the encoder's own size.
    stages = [k for k in test["arrays"] if k.startswith("stages@")]
    assert stages and passes["slide-96-80-53"]["arrays"][stages[0]] / (4 * 6) == pytest.approx(
        test["arrays"][stages[0]] / test["items"] * 100 / 64
    )

    # Timed at 80 px and then at 64 px, a run at 80 px is predicted from the 80 px run's rate,
    # though the 64 px run is the later one.
    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert (
        invoke("run", "-e", "mini-mae", "-t", "part-seg", "--limit", "6", *QUICK, "--db", db).exit_code == 0
    )
    runs = {r["id"]: r for r in json.loads(invoke("runs", "--format", "json", "--db", db).output)}
    at_80 = next(i for i, r in runs.items() if r["config"]["views"]["test"]["transform"] == "slide-96-80-53")
    later = dry_run(*args[:-1], "5", *QUICK, "--no-cache", "--db", db)
    encoded = [p for p in later[0]["encoders"][0]["passes"] if p["action"] == "encode"]
    assert len(encoded) == 2 and {p["timed_by_run"] for p in encoded} == {at_80}
    timer = runs[at_80]["timing"]
    for p in encoded:
        assert p["seconds"] == pytest.approx(p["items"] / (timer["images"] / timer["wall_seconds"]))


def test_a_damaged_entry_is_named_and_left_in_place(tmp_path, isolated_home):
    args = ["-e", "mini-mae", "-t", "part-retrieval", "--limit", "4", "--workers", "0"]
    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert invoke("run", *args, "--db", db).exit_code == 0
    (meta,) = (isolated_home / "cache").glob("*/meta.json")
    (meta.parent / json.loads(meta.read_text())["arrays"]["cls"]["file"]).write_bytes(b"x")
    (p,) = dry_run(*args, "--force", "--db", db)[0]["encoders"][0]["passes"]
    # The run would set it aside and encode again; the dry run says so and moves nothing.
    assert (
        p["action"] == "encode"
        and "array 'cls'" in p["damaged_entry"]
        and "has 1 bytes" in p["damaged_entry"]
    )
    assert meta.exists() and not (isolated_home / "cache" / ".bad").exists()  # set aside by a run only


def test_no_cache_forecast_encodes_every_pass(tmp_path, isolated_home):
    forecast = dry_run("-e", "mini-mae", "-t", "part-retrieval", "--limit", "4", "--no-cache")
    assert forecast[0]["cache"] is None
    assert [p["action"] for p in forecast[0]["encoders"][0]["passes"]] == ["encode"]
    assert not (isolated_home / "cache").exists()


def test_json_needs_dry_run(tmp_path):
    result = CliRunner().invoke(cli, ["run", "-e", "mini-mae", "-t", "part-retrieval", "--json"])
    assert result.exit_code == 1 and "--json goes with --dry-run" in result.output


def test_shapes_of_an_encoder_the_meta_device_cannot_run():
    """An encoder computing outside torch's operators gets the same shapes from one zero image."""
    from partbench.plugins import registry
    from partbench.runner.forecast import _shapes
    from partbench.specs import EncoderRequest

    spec = registry().encoder("mini-mae")
    stages = (0, 3)
    plain = _shapes(spec.load(EncoderRequest("mini-mae")), stages, reload=lambda: None)

    def numpy_side(encoder):
        forward = encoder.forward

        def through_numpy(images, stages=()):
            images.numpy()  # a meta tensor has no data: this raises there
            return forward(images, stages=stages)

        encoder.forward = through_numpy
        return encoder

    loads = []

    def reload():
        loads.append(1)
        return numpy_side(spec.load(EncoderRequest("mini-mae")))

    assert _shapes(numpy_side(spec.load(EncoderRequest("mini-mae"))), stages, reload) == plain
    assert loads == [1]
    assert plain["stages"] == ((64, 256), "float16") and plain["cls"] == ((128,), "float32")


def test_generated_data_a_run_would_keep_is_counted_once(tmp_path, isolated_home):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["-e", "mini-random", "-t", "object-retrieval", *QUICK, "--db", db]
    args += ["--dataset-option", "train=6", "--dataset-option", "test=5"]
    assert dry_run(*args, "--limit", "4")[0]["data_bytes"] == 0  # a limited run keeps none
    (before,) = dry_run(*args)
    assert before["data_bytes"] > 0 and not list((isolated_home / "cache").glob("synparts-*"))
    text = invoke("run", *args, "--dry-run").output
    assert "data: synparts is drawn before the first pass and kept for later commands" in text
    assert invoke("run", *args).exit_code == 0
    kept = sum(p.stat().st_size for p in (isolated_home / "cache").glob("synparts-*.npz"))
    # The arrays exactly; each file adds its zip headers and parameter record (a few KiB).
    assert 0 <= kept - before["data_bytes"] <= 2 * 4096
    assert dry_run(*args, "--force")[0]["data_bytes"] == 0  # kept: nothing to draw again


def test_a_run_on_this_cpu_at_another_thread_count_times_the_forecast_and_is_named(tmp_path, isolated_home):
    import torch

    db = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["-e", "mini-mae", "-t", "part-retrieval", *QUICK, "--db", db]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as a study's lanes run
        assert invoke("run", *args, "--limit", "10").exit_code == 0
        torch.set_num_threads(2)
        (p,) = dry_run(*args, "--limit", "12")[0]["encoders"][0]["passes"]
        runs = json.loads(invoke("runs", "--format", "json", "--db", db).output)
        (one,) = runs
        assert one["device"].endswith(", 1 threads)") and p["timed_by_run"] == one["id"]
        assert p["timed_on"] == one["device"]
        assert p["seconds"] == pytest.approx(
            p["items"] * one["timing"]["wall_seconds"] / one["timing"]["images"]
        )
        text = invoke("run", *args, "--limit", "12", "--dry-run").output
        assert f"(as run {one['id']} was timed on {one['device']})" in text
        # A run at this very thread count, once there is one, is the one that times it.
        assert invoke("run", *args, "--limit", "8").exit_code == 0
        (p,) = dry_run(*args, "--limit", "12")[0]["encoders"][0]["passes"]
        assert p["timed_by_run"] == max(
            r["id"] for r in json.loads(invoke("runs", "--format", "json", "--db", db).output)
        )
        assert "timed_on" not in p
    finally:
        torch.set_num_threads(threads)


def test_the_study_forecasts_every_run_and_claim_4s_retrievals_from_its_passes(
    tmp_path, isolated_home, monkeypatch
):
    from partbench.runner import forecast as planning
    from partbench.study import MINI_ENCODERS, WITH_PROJECTION
    from partbench.suites import BUILTIN_TASKS

    monkeypatch.setattr(planning, "SAMPLED", 8)  # crops counted on 8 samples a split: quick
    db = tmp_path / "r.db"
    result = invoke("study", "mini", "--dry-run", "--json", "--db", f"sqlite:///{db}")
    assert result.exit_code == 0, result.output
    runs, *retrievals = json.loads(result.output)
    assert [e["encoder"] for e in runs["encoders"]] == list(MINI_ENCODERS)
    for e in runs["encoders"]:
        assert [r["task"] for r in e["runs"]] == list(BUILTIN_TASKS)
        assert all(r["will_run"] and r["stored_run"] is None for r in e["runs"])
        assert e["bytes"] > 0 and all(p["action"] == "encode" for p in e["passes"])
    assert runs["data_bytes"] > 0
    # The class-token and projection retrievals read the test crops the runs above encode.
    assert len(retrievals) == 2
    for f in retrievals:
        assert f["data_bytes"] == 0
        assert [e["encoder"] for e in f["encoders"]] == list(WITH_PROJECTION)
        for e in f["encoders"]:
            (p,) = e["passes"]
            assert p["action"] == "encoded by the runs above" and p["bytes"] == e["bytes"] == 0
            first = next(r for r in runs["encoders"] if r["encoder"] == e["encoder"])
            assert p["entry"] in {q["entry"] for q in first["passes"]}
    assert not db.exists() and not (isolated_home / "cache").exists()  # nothing written
    text = invoke("study", "mini", "--dry-run", "--db", f"sqlite:///{db}").output
    assert text.count("encoded by the runs above") == 6 and "Dry run: nothing was run" in text
    assert "--json goes with --dry-run" in invoke("study", "mini", "--json").output
