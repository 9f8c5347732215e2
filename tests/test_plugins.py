"""The plugin manager: built-ins through entry points, attribution, failures skipped."""

from __future__ import annotations

import sys
import types

import pytest

from partbench import plugins
from partbench.errors import UnknownNameError
from partbench.hookspecs import hookimpl
from partbench.specs import DatasetSpec, EncoderSpec, TaskSpec


def _encoder(name: str) -> EncoderSpec:
    return EncoderSpec(name=name, load=lambda request: None, family="none")


def test_builtins_arrive_through_the_entry_point_group():
    reg = plugins.registry()
    assert {"random-vit", "timm:"} <= set(reg.encoders)
    assert {
        "part-retrieval",
        "part-linear",
        "part-attentive",
        "part-seg",
        "object-retrieval",
        "object-linear",
        "object-seg",
    } <= set(reg.tasks)
    assert "synparts" in reg.datasets
    assert {s.plugin for s in reg.encoders.values()} == {"partbench"}
    assert reg.problems == []


def test_a_plugin_object_registers_and_is_attributed():
    class Extra:
        @hookimpl
        def register_encoders(self, register):
            register(_encoder("extra-enc"))

    pm, problems = plugins.plugin_manager(extra=[("someone-else", Extra())])
    reg = plugins.build_registry(pm, problems)
    assert reg.encoders["extra-enc"].plugin == "someone-else"
    assert reg.encoders["random-vit"].plugin == "partbench"


def test_a_failing_hook_is_reported_and_the_rest_survive():
    class Broken:
        @hookimpl
        def register_tasks(self, register):
            raise RuntimeError("boom")

    class WrongType:
        @hookimpl
        def register_datasets(self, register):
            register("not a spec")

    pm, problems = plugins.plugin_manager(extra=[("broken", Broken()), ("wrong", WrongType())])
    reg = plugins.build_registry(pm, problems)
    assert "part-retrieval" in reg.tasks and "synparts" in reg.datasets
    assert any("broken" in p and "boom" in p for p in reg.problems)
    assert any("wrong" in p and "DatasetSpec" in p for p in reg.problems)


def test_a_plugin_that_fails_to_import_is_skipped(monkeypatch):
    class FakeDist:
        name = "bad-plugin"

    class FakeEntryPoint:
        name, dist = "bad", FakeDist()

        def load(self):
            raise ImportError("no module named nowhere")

    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real(group=group), FakeEntryPoint()])
    monkeypatch.delenv("PARTBENCH_LOAD_PLUGINS")
    pm, problems = plugins.plugin_manager()
    reg = plugins.build_registry(pm, problems)
    assert "random-vit" in reg.encoders
    assert any("bad-plugin" in p and "nowhere" in p for p in problems)


def test_the_allow_list_keeps_other_distributions_out(monkeypatch):
    monkeypatch.setenv("PARTBENCH_LOAD_PLUGINS", "someone-else")
    pm, _ = plugins.plugin_manager()
    assert plugins.build_registry(pm).encoders == {}


def test_a_second_plugin_cannot_take_over_a_name():
    class Thief:
        @hookimpl
        def register_encoders(self, register):
            register(_encoder("random-vit"))

    pm, problems = plugins.plugin_manager(extra=[("thief", Thief())])
    reg = plugins.build_registry(pm, problems)
    assert reg.encoders["random-vit"].plugin == "partbench"
    assert any("thief" in p and "random-vit" in p for p in reg.problems)


def test_a_hookimpl_may_take_a_subset_of_arguments_and_specs_validate():
    class NoArgs:
        @hookimpl
        def register_encoders(self):
            pass

    pm, problems = plugins.plugin_manager(extra=[("noargs", NoArgs())])
    assert plugins.build_registry(pm, problems).problems == []
    with pytest.raises(ValueError, match="family"):
        EncoderSpec(name="x", load=lambda r: None, family="magic")
    with pytest.raises(ValueError, match="level"):
        TaskSpec("x", "scene", "acc", "images", lambda: None)
    with pytest.raises(ValueError, match="capabilities"):
        DatasetSpec("x", lambda root: None, frozenset({"video"}))


def test_names_resolve_with_prefixes_and_helpful_errors():
    reg = plugins.registry()
    assert reg.encoder("timm:vit_tiny_patch16_224").name == "timm:"
    with pytest.raises(UnknownNameError) as err:
        reg.encoder("random-vt")
    assert "did you mean 'random-vit'" in str(err.value)
    assert "timm:<model>" in str(err.value)
    with pytest.raises(UnknownNameError, match=r"known tasks: .*part-seg"):
        reg.task("part-segg")
    with pytest.raises(UnknownNameError, match="known datasets"):
        reg.dataset("imagenet")


def test_loading_the_plugins_imports_no_torch():
    import subprocess

    code = (
        "import sys; from partbench.plugins import registry; registry(); "
        "print(sorted(m for m in ('torch', 'timm', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trace_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("PARTBENCH_TRACE_PLUGINS", "1")
    pm, _ = plugins.plugin_manager(extra=[("tracer-test", types.SimpleNamespace())])
    pm.hook.register_encoders(register=lambda spec: None)
    assert "register_encoders" in capsys.readouterr().err
