"""The plugin API's version and promise: a plugin written for API 1 runs through its adapter on
every built-in task; one that cannot be adapted is refused when it registers, with a message."""

from __future__ import annotations

import json
import types

import plugin_api1
import pytest
import torch

from partbench import api, plugins
from partbench.api_versions import API_VERSION, MIGRATION, API1Encoder, PluginAPIError
from partbench.encoders.base import EncoderOutput
from partbench.hookspecs import hookimpl
from partbench.runner import RunOptions, run
from partbench.specs import EncoderRequest, EncoderSpec, TaskSpec
from partbench.store import Store

BUILTIN_TASKS = (
    "part-retrieval",
    "part-linear",
    "part-attentive",
    "part-seg",
    "object-retrieval",
    "object-linear",
    "object-seg",
)


def _registry(*extra: tuple[str, object]) -> plugins.Registry:
    return plugins.build_registry(*plugins.plugin_manager(extra=list(extra)))


def _module(*hooks: object, **attributes: object) -> types.ModuleType:
    """A plugin module, as an entry point names one, holding the given hook functions."""
    module = types.ModuleType("plugin")
    for hook in hooks:
        setattr(module, hook.__name__, hook)
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


def _declaring(version: object, *hooks: object) -> types.ModuleType:
    """A plugin module declaring PARTBENCH_API = version."""
    return _module(*hooks, PARTBENCH_API=version)


def test_the_api_states_its_version():
    assert api.API_VERSION == API_VERSION == 2 and "API_VERSION" in api.__all__


@pytest.mark.slow  # 36 s on a 2-core CPU
def test_an_api1_plugin_runs_through_every_builtin_task_on_synparts(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path))
    reg = _registry(("api1-plugin", plugin_api1))
    assert reg.problems == []
    assert reg.api_versions["api1-plugin"] == "undeclared" and reg.api_versions["partbench"] == "2"
    assert reg.adapted["api1-plugin"] == ["api1-nearest-mean"]  # the factory shows its shape
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    quick = RunOptions(limit=8, workers=0, options=("iterations=5", "epochs=2"))
    outcomes = run(reg, store, ["api1-hog"], list(BUILTIN_TASKS), quick, say=lambda _: None)
    assert {o.task: o.status for o in outcomes} == dict.fromkeys(BUILTIN_TASKS, "done"), [
        (o.task, o.error) for o in outcomes if o.status != "done"
    ]
    runs = {r.task: r for r in store.runs(status="done")}
    encoder = runs["part-seg"].config["encoder"]
    # API 1's ViT-style fields (patch 8, width 12, depth 1) become one stage, read from block 1.
    assert encoder["stages"] == [["blocks.0", 12, 8]] and encoder["plugin_api"] == 1
    assert runs["part-seg"].config["views"]["train"]["stages"] == [0]
    # And the plugin's own task, factory without options, on a built-in encoder and its encoder.
    outcomes = run(
        reg,
        store,
        ["api1-hog", "random-vit"],
        ["api1-nearest-mean"],
        RunOptions(limit=8, workers=0),
        say=lambda _: None,
    )
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    assert all(0 <= o.value.value <= 100 for o in outcomes)


def test_the_api1_encoder_gives_its_blocks_as_stages():
    encoder = plugin_api1.build(EncoderRequest(name="api1-hog"))
    adapted = API1Encoder(encoder, "api1-plugin")
    images = torch.randn(2, 3, 64, 64)
    old = encoder.forward(images, blocks=[1])  # the API 1 call, answered in API 2's shape
    new = adapted.forward(images, stages=[0])
    assert new.final.shape == (2, 12, 8, 8) and set(new.stages) == {0}
    torch.testing.assert_close(new.final, old.final)
    torch.testing.assert_close(new.pooled, new.final.mean(dim=(2, 3)))  # the old cls: the tokens' mean
    with pytest.raises(ValueError, match=r"stages 0\.\.0"):
        adapted.forward(images, stages=[1])


def test_encoder_output_takes_api1_keywords_as_maps():
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # (B, N, D), grid 2 x 3
    out = EncoderOutput(cls=tokens[:, 0], patch_tokens=tokens, grid=(2, 3), blocks={4: tokens * 2})
    assert out.final.shape == (2, 3, 2, 3) and out.grid == (2, 3)
    assert out.final[1, 2, 1, 0] == tokens[1, 3, 2]  # cell (row 1, col 0) is token 3
    assert set(out.stages) == {3} and torch.equal(out.stages[3], out.final * 2)
    with pytest.raises(TypeError, match="got \\['patch'\\]"):
        EncoderOutput(patch=tokens)


def test_a_declared_api1_plugin_is_adapted_as_it_registers():
    declared = _declaring(1, plugin_api1.register_encoders, plugin_api1.register_tasks)
    reg = _registry(("old-declared", declared))
    assert reg.problems == [] and reg.api_versions["old-declared"] == "1"
    assert reg.adapted["old-declared"] == ["api1-hog", "api1-nearest-mean"]
    encoder = reg.encoder("api1-hog").load(EncoderRequest(name="api1-hog"))
    assert isinstance(encoder, API1Encoder) and [s.stride for s in encoder.stages] == [8]
    task = reg.task("api1-nearest-mean").create({})
    assert set(task.views(None, encoder)) == {"train", "test"}


def test_a_version_this_partbench_cannot_speak_is_refused_whole():
    newer = _declaring(3, plugin_api1.register_encoders, plugin_api1.register_tasks)
    reg = _registry(("future-plugin", newer))
    assert "api1-hog" not in reg.encoders and "api1-nearest-mean" not in reg.tasks
    (message,) = reg.plugin_problems["future-plugin"]
    assert message == (
        "plugin 'future-plugin' declares PARTBENCH_API = 3, which this partbench does not speak: it "
        "provides API 2 and adapts API 1; upgrade partbench (migration: docs/plugins.md#migrating). "
        "Nothing of it is registered"
    )
    reg = _registry(("odd-plugin", _declaring("2", plugin_api1.register_encoders)))
    assert "declares PARTBENCH_API = '2'" in reg.plugin_problems["odd-plugin"][0]


def test_an_api2_task_factory_without_options_is_refused_as_it_registers():
    @hookimpl
    def register_tasks(register):
        register(TaskSpec("no-options", "object", "top1", "images", lambda: None))
        register(TaskSpec("with-options", "object", "top1", "images", lambda options: None))

    reg = _registry(("half-migrated", _declaring(2, register_tasks)))
    assert "with-options" in reg.tasks and "no-options" not in reg.tasks
    (message,) = reg.plugin_problems["half-migrated"]
    assert message.startswith("plugin 'half-migrated' declares PARTBENCH_API = 2, but task 'no-options'")
    assert "create(options)" in message and MIGRATION in message


def test_an_encoder_without_stages_fails_its_runs_with_what_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path))

    class ResNetEncoder:  # neither API 2's stages nor API 1's ViT-style fields
        name, family, weights_id, input_size = "cnn", "none", "none", 64

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="old-cnn", load=lambda request: ResNetEncoder(), family="none"))

    reg = _registry(("cnn-plugin", _module(register_encoders)))
    with pytest.raises(
        PluginAPIError, match="encoder 'old-cnn' of plugin 'cnn-plugin' loads as a ResNetEncoder"
    ):
        reg.encoder("old-cnn").load(EncoderRequest(name="old-cnn"))
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    (outcome,) = run(reg, store, ["old-cnn"], ["object-retrieval"], RunOptions(limit=4), say=lambda _: None)
    assert outcome.status == "failed" and "without 'stages'" in outcome.error and MIGRATION in outcome.error
    assert "AttributeError" not in outcome.error


def test_list_plugins_shows_each_plugins_api(monkeypatch):
    from click.testing import CliRunner

    from partbench.cli import cli

    reg = _registry(("api1-plugin", plugin_api1), ("new-plugin", _declaring(2)))
    monkeypatch.setattr(plugins, "_REGISTRY", reg)
    result = CliRunner().invoke(cli, ["list", "plugins", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["partbench"]["api"] == "2" and rows["new-plugin"]["api"] == "2"
    assert rows["api1-plugin"]["api"] == "undeclared" and rows["api1-plugin"]["adapted"] == [
        "api1-nearest-mean"
    ]
    monkeypatch.setenv("COLUMNS", "200")  # rich's width: one line per cell
    table = CliRunner().invoke(cli, ["list", "plugins"])
    assert "undeclared (adapted: api1-nearest-mean)" in table.stdout
