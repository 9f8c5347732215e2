"""The shipped mini encoders do what docs/miniature.md says they do: the supervised ViT and the
reference CNN learned object classes and the self-supervised minis are above chance on object
retrieval (measured again here on the shipped files), and the committed miniature was computed
with exactly the shipped files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from partbench.encoders.mini import MINI, WEIGHTS_DIR
from partbench.metrics.resampling import paired_bootstrap
from partbench.plugins import registry
from partbench.ranking.model import at_chance
from partbench.runner import RunOptions, run
from partbench.store import Store
from partbench.study import FLOOR, SERVES
from partbench.suites import STUDY_TASKS

COMMITTED = Path(__file__).resolve().parent.parent / "leaderboard"
# What docs/miniature.md states: mini-supervised's object-linear top-1 is at least this on SynParts.
SUPERVISED_OBJECT_LINEAR = 80.0
# The encoders docs/miniature.md states are above the floor at the level their method serves.
ABOVE_FLOOR = ("mini-supervised", "mini-cnn", "mini-mocov3", "mini-dino", "mini-mae", "mini-ibot")


@pytest.fixture(scope="module")
def object_linear(tmp_path_factory):
    """object-linear for the object-level encoders and the floor, on the shipped files."""
    folder = tmp_path_factory.mktemp("mini")
    store = Store(f"sqlite:///{folder / 'mini.db'}")
    names = ["mini-supervised", "mini-cnn", FLOOR]
    outcomes = run(registry(), store, names, ["object-linear"], RunOptions(workers=0), say=lambda _: None)
    assert {o.status for o in outcomes} == {"done"}, outcomes
    runs = {r.encoder: r for r in store.runs(status="done")}
    return store, runs


@pytest.mark.slow  # the shipped files on full-size SynParts: the size is the claim
def test_shipped_supervised_encoders_learned_object_classes(object_linear):
    store, runs = object_linear
    top1 = {m.name: m.value for m in runs["mini-supervised"].metrics}["top1"]
    assert top1 >= SUPERVISED_OBJECT_LINEAR
    for name in ("mini-supervised", "mini-cnn"):
        diff, low, high = paired_bootstrap("top1", store.items(runs[name].id), store.items(runs[FLOOR].id))
        assert low > 0, (name, diff, low, high)
        assert runs[name].weights_id == _shipped_id(name)


@pytest.mark.slow  # the shipped files on full-size SynParts: the size is the claim
def test_self_supervised_minis_are_above_chance_on_object_retrieval(tmp_path):
    """The task where they were at chance before their recipes ran longer: each one's interval
    now lies above the expected AP of random features on the same items, if only just."""
    store = Store(f"sqlite:///{tmp_path / 'mini.db'}")
    names = ["mini-mocov3", "mini-dino", "mini-mae", "mini-ibot"]
    outcomes = run(registry(), store, names, ["object-retrieval"], RunOptions(workers=0), say=lambda _: None)
    assert {o.status for o in outcomes} == {"done"}, outcomes
    for r in store.runs(status="done"):
        m = {m.name: m for m in r.metrics}["mAP"]
        assert not at_chance(m.value, [m.ci_low, m.ci_high], r.chance["mAP"]), (r.encoder, m, r.chance)
        assert r.weights_id == _shipped_id(r.encoder)


def _shipped_id(name: str) -> str:
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())["files"]
    return "sha256:" + manifest[f"mini-{MINI[name].method}.safetensors"]["sha256"]


@pytest.mark.slow  # every shipped file through the full gate: the gate as shipping runs it is the claim
def test_each_shipped_file_beats_its_initialisation_at_the_level_it_serves():
    """The gate, run again on the shipped files: the encoders docs/miniature.md states are above the
    floor pass it, the others do not."""
    from partbench.pretrain.ship import check_gate

    for name, mini in MINI.items():
        result = check_gate(mini.method, WEIGHTS_DIR / f"mini-{mini.method}.safetensors", seed=0)
        assert result["level"] == SERVES[name]
        assert result["passed"] == (name in ABOVE_FLOOR), (name, result)


def test_committed_miniature_is_of_the_shipped_files_and_says_what_the_docs_say():
    record = json.loads((COMMITTED / "mini-claims.json").read_text())
    for name in MINI:
        assert record["weights"][name] == _shipped_id(name), name
    floor = {d["a"]: d for d in record["above_floor"]}
    assert set(floor) == set(SERVES)
    for name, d in floor.items():
        assert d["level"] == SERVES[name]
        assert (d["clear"] == 1) == (name in ABOVE_FLOOR), (name, d)
    # No trained mini is at chance on a task of the study; on the dense tasks the page names
    # the ones that are (docs/miniature.md).
    at_chance = record["tasks_at_chance"]
    studied = {name: [t for t in tasks if t in STUDY_TASKS] for name, tasks in at_chance.items()}
    assert studied == {name: [] for name in SERVES}
    miniature_page = (COMMITTED.parent / "docs" / "miniature.md").read_text()
    for name, tasks in record["tasks_at_chance"].items():
        for task in tasks:
            assert f"{name}'s {task}" in miniature_page, (name, task)


def test_a_shipped_mini_loads_the_same_network_without_its_random_initialisation():
    """Loading skips timm's initialisation (every parameter comes from the file): the network
    is the one a fully initialised model loads to, and the floor still draws from its seed."""
    import torch

    from partbench.encoders.checkpoints import load_strict, read_checkpoint
    from partbench.encoders.mini import shipped_weights
    from partbench.encoders.vit import build_mini_vit
    from partbench.specs import EncoderRequest

    specs = registry().encoders
    loaded = specs["mini-mae"].load(EncoderRequest(name="mini-mae")).model.state_dict()
    reference = MINI["mini-mae"].build(0)
    load_strict(reference, read_checkpoint(shipped_weights("mae")), "mini-mae")
    assert loaded.keys() == reference.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    floor = specs[FLOOR].load(EncoderRequest(name=FLOOR, seed=3)).model.state_dict()
    seeded = build_mini_vit(3).state_dict()
    assert all(torch.equal(floor[k], v) for k, v in seeded.items())
    assert not torch.equal(floor["pos_embed"], build_mini_vit(4).state_dict()["pos_embed"])
