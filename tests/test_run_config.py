"""One run configuration: a run's hash, its store columns and its feature-cache keys come
from one RunConfig, built from the plan's declared configuration. Stored runs and cache
entries made before keep answering: the same inputs give the same hashes and keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_runner import _opts, _registry_with

from partbench.cache import cache_root
from partbench.errors import PartbenchError
from partbench.plugins import registry
from partbench.runner import Machine, RunConfig, RunOptions, declared_config, make_plan, run
from partbench.runner.config import covers
from partbench.specs import EncoderSpec
from partbench.store import Store
from partbench.suites import BUILTIN_TASKS

LEADERBOARD = Path(__file__).resolve().parent.parent / "leaderboard" / "mini.json"

# Computed with the code before the one run configuration (five hand-kept copies of it), from
# the runs of the test below: a Tiny encoder ("test-plugin", so plugin_version "unknown") and
# one that fails to load, on SynParts with --limit 24.
HASHES_DEFAULT = {
    "tiny/part-retrieval": "71a9172e764df74bdd3a2d13d55e820db2cd8ce349c5f61413f5992d7edb6baa",
    "tiny/part-linear": "42b1170c5ee1872ed37f8ce821fde55e1f4519b42393e34d155cf5146e731271",
    "tiny/part-attentive": "5b482d78419d0ec99fecb5bc4487a1fb4adc7195b671757b9a57ad24e0bfdfca",
    "tiny/part-seg": "7d260cb810a7ae509fc0c65e81ee1488eacbcadecb1e9af01b41236166968706",
    "tiny/object-retrieval": "fd7513e3fe8e2930984c65b557b4dccba7aa74d97434cb1685628b01b668d952",
    "tiny/object-linear": "9ba39b3c8870a2053138ae148be8f368927059926ff832dc35c165caf9fdacbb",
    "tiny/object-seg": "a0f2f68951eef086d31c81b927ef5050adc53c6d742c27eb46c63867d40a8330",
    "broken/part-retrieval": "6a97d903d3d14950a61b81db58c850a985576ff3851d8aca75bdd439260791fb",
    "broken/part-linear": "bfcb2de374ea544d22f2dc71f3b461baced9f95c3614e297ed7211548bb60b3f",
    "broken/part-attentive": "935e651eb143d1eaf562efe72333a3e92e20c6d1dd784346682ac686fbf4a194",
    "broken/part-seg": "2a91df86aa043f05b06b50d4fbe80466d8fc43eb062e5d03fcfd1efbd04f11f0",
    "broken/object-retrieval": "5f9565b1effdb63f986885930d303a208e51fca68b535c1ab8de7a026ed3842a",
    "broken/object-linear": "bd12c104ee36bd5bb15e2edbd9d7909c736df4f6d39431f58bec4cf53059a5a6",
    "broken/object-seg": "c08ae60c530e80b591c7daed0650d59e33f673faff774d5c92ad5201a0a3add7",
}
HASHES_VARIANT = {
    "tiny/part-retrieval": "a5dc5459e860ee2fbac965529aec3dd9754e7f3079789d7782e361c3dc5a8bb2",
    "tiny/object-linear": "fbeb50a79215c39d3fa89798386ed439b263294c71017991d6f45e5f61d346ac",
    "broken/part-retrieval": "047ef7ad5278365cbb02414208f5ddb4c1c85b2833f4ad119e0428144a72c8e8",
    "broken/object-linear": "fd3d790dcbadde2ad627825f936e10105dadb03ae2dcd62954aa737b151ac6a5",
}
CACHE_KEYS = [
    "27800e219670b93f09bc29d191ab1ac0",
    "6590e4a995a59f45c0afe9d871ed9ec2",
    "a7ece32106e2e424acf0a17297b0fb87",
    "ad98d3835c7cc7ba9244ad65f8a2e05f",
    "b0ab1f5493ab2a05b5e0654bb61d1072",
]


def _broken(request):
    raise RuntimeError("no weights here")


# The crop rule changed on purpose after those hashes were taken (corners rounded as PIL
# rounds them), and the tasks reading crops went up one version each so that no older run or
# cache entry answers for the new crops. With those versions put back, every hash is as it was.
VERSIONS_WHEN_RECORDED = {"part-retrieval": "1", "part-linear": "2", "part-attentive": "2"}


def _as_recorded(config: dict) -> dict:
    old = VERSIONS_WHEN_RECORDED.get(config["task"]["name"])
    return {**config, "task": {**config["task"], "version": old}} if old else config


def _runs(tmp_path, label: str, tasks: list[str], **kw) -> dict[str, str]:
    reg = _registry_with(("tiny", "ok"))
    reg.encoders["broken"] = EncoderSpec("broken", _broken, "none", plugin="test-plugin")
    store = Store(f"sqlite:///{tmp_path / label}.db")
    run(reg, store, ["tiny", "broken"], tasks, _opts(**kw), say=lambda _: None)
    runs = store.runs()
    for r in runs:  # the digest recomputed from the configuration the store holds
        assert RunConfig(**r.config).digest == r.config_hash
    store.close()
    return {f"{r.encoder}/{r.task}": RunConfig(**_as_recorded(r.config)).digest for r in runs}


def test_runs_hash_and_cache_keys_exactly_as_before_the_one_run_configuration(tmp_path):
    # The tasks that existed when the hashes were taken (`all` holds more now).
    study_tasks = sorted({key.split("/")[1] for key in HASHES_DEFAULT})
    assert _runs(tmp_path, "default", study_tasks) == HASHES_DEFAULT
    variant = {"seed": 3, "repeats": 2, "options": ("epochs=3", "iterations=5", "part-retrieval.feature=cls")}
    assert _runs(tmp_path, "variant", ["part-retrieval", "object-linear"], **variant) == HASHES_VARIANT
    # The feature cache answers from the same entries: every whole-image pass's key as before
    # (crop passes carry the crop rule's version in theirs), and each is the key a stored
    # configuration derives for its pass.
    on_disk = {p.name for p in cache_root().iterdir() if p.is_dir()}
    store = Store(f"sqlite:///{tmp_path / 'default'}.db")
    derived = {
        (v["inputs"], RunConfig(**r.config).feature_key(v["split"], v["inputs"], v["transform"]))
        for r in store.runs(status="done")
        for v in r.config["views"].values()
    }
    store.close()
    whole = {key for inputs, key in derived if inputs != "crops"}
    crops = {key for inputs, key in derived if inputs == "crops"}
    assert whole and crops and {key for _, key in derived} <= on_disk
    assert whole <= set(CACHE_KEYS) and not crops & set(CACHE_KEYS)
    assert len(on_disk) == len(CACHE_KEYS)


def _committed_runs() -> list[dict]:
    rows = json.loads(LEADERBOARD.read_text())
    return [r for row in rows for r in row["runs"].values()]


def test_every_committed_run_hashes_as_stored_and_its_plan_declares_its_configuration():
    runs = _committed_runs()
    assert {r["config"]["task"]["name"] for r in runs} == set(BUILTIN_TASKS)
    reg = registry()
    for stored in runs:
        config = stored["config"]
        assert RunConfig(**config).digest == stored["config_hash"]
        # What planning declares for the same command is what the run stored: a sweep
        # recognises it without loading anything.
        opts = RunOptions(
            seed=config["seed"],
            limit=config["limit"],
            repeats=config["repeats"],
            precision=config["precision"],
            compile=config["compile"],
            options=[
                f"{k}={json.dumps(v) if isinstance(v, bool) else v}"
                for k, v in config["task"]["options"].items()
            ],
        )
        plan = make_plan(
            reg, [config["encoder"]["name"]], [config["task"]["name"]], opts, Machine.elsewhere("cpu")
        )
        ((name, spec),), (task,) = plan.encoders, plan.tasks
        declared = declared_config(plan, name, spec, task)
        if config["task"]["version"] != task.version:
            # A run of an earlier version of its task answers no plan of the current one.
            assert not covers(config, declared), config["task"]["name"]
            declared = {**declared, "task": {**declared["task"], "version": config["task"]["version"]}}
        assert covers(config, declared), config["task"]["name"]
        assert not covers(config, {**declared, "seed": config["seed"] + 1})


def test_a_plan_is_complete_when_returned_and_cannot_be_patched(tmp_path):
    plan = make_plan(registry(), ["mini-random"], ["part"], RunOptions(device="cpu", workers=None))
    assert plan.opts.precision == "fp32" and plan.opts.device == "cpu" and isinstance(plan.opts.workers, int)
    assert plan.machine.text.startswith("cpu (") and plan.machine.versions["partbench"]
    with pytest.raises(AttributeError):
        plan.opts = RunOptions()  # type: ignore[misc]
    # Planned for a GPU job elsewhere: "auto" precision resolves by the rule the runner uses.
    there = make_plan(registry(), ["mini-random"], ["part"], RunOptions(), Machine.elsewhere("cuda"))
    assert there.opts.precision == "bf16" and there.machine.device is None


def test_run_options_travel_as_json_and_refuse_unknown_keys():
    opts = RunOptions(
        dataset="cub200", data_root=Path("/data/cub"), options=("epochs=2",), limit=8, force=True
    )
    again = RunOptions.from_json(json.loads(json.dumps(opts.to_json())))
    assert again == opts
    with pytest.raises(PartbenchError, match=r"unknown key.*colour"):
        RunOptions.from_json({**opts.to_json(), "colour": "red"})
