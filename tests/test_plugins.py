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


# --- names cannot be taken, clashes are reported, versions are kept (issue 10) ---------------


class _FakeDist:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version


class _FakeEntryPoint:
    """An entry point of an installed distribution, without installing anything."""

    def __init__(self, dist: str, version: str, obj: object, name: str = "plugin"):
        self.name, self.dist, self._obj = name, _FakeDist(dist, version), obj

    def load(self) -> object:
        return self._obj


def _thief(*names: str) -> object:
    class Thief:
        @hookimpl
        def register_encoders(self, register):
            for name in names:
                register(_encoder(name))

    return Thief()


@pytest.mark.parametrize("thief_first", [True, False])
def test_builtin_names_are_kept_whatever_the_discovery_order(monkeypatch, thief_first):
    real = list(plugins.entry_points(group="partbench"))
    thief = _FakeEntryPoint("thief-dist", "6.6.6", _thief("random-vit", "dino", "timm:vit_evil"))
    found = [thief, *real] if thief_first else [*real, thief]
    monkeypatch.setattr(plugins, "entry_points", lambda group: found)
    monkeypatch.setenv("PARTBENCH_LOAD_PLUGINS", "partbench,thief-dist")
    reg = plugins.build_registry(*plugins.plugin_manager())
    assert reg.encoders["random-vit"].plugin == "partbench"
    assert reg.encoders["dino"].plugin == "partbench"
    # A name under a built-in prefix would shadow what the built-in prefix answers.
    assert "timm:vit_evil" not in reg.encoders
    assert reg.encoder("timm:vit_evil").name == "timm:"
    for name in ("random-vit", "dino", "timm:vit_evil"):
        assert any("thief-dist" in p and f"'{name}'" in p for p in reg.problems), reg.problems


@pytest.mark.parametrize("order", [("alpha", "beta"), ("beta", "alpha")])
def test_a_clash_between_two_plugins_drops_both_and_names_both(order):
    extra = [(name, _thief("shared-enc", f"{name}-own")) for name in order]
    reg = plugins.build_registry(*plugins.plugin_manager(extra=extra))
    assert "shared-enc" not in reg.encoders
    assert reg.encoders["alpha-own"].plugin == "alpha" and reg.encoders["beta-own"].plugin == "beta"
    clash = [p for p in reg.problems if "shared-enc" in p]
    assert len(clash) == 1 and "'alpha'" in clash[0] and "'beta'" in clash[0] and "neither" in clash[0]
    assert reg.plugin_problems["alpha"] == reg.plugin_problems["beta"] == clash


def test_a_task_cannot_be_called_like_a_selector():
    class Selector:
        @hookimpl
        def register_tasks(self, register):
            register(TaskSpec("all", "part", "mAP", "keypoints", lambda options: None))

    reg = plugins.build_registry(*plugins.plugin_manager(extra=[("selector", Selector())]))
    assert "all" not in reg.tasks
    assert any("selector" in p and "'all'" in p and "reserved" in p for p in reg.problems)


def test_each_distribution_version_is_kept_for_its_specs(monkeypatch):
    real = list(plugins.entry_points(group="partbench"))
    extra = _FakeEntryPoint("extra-dist", "2.5.1", _thief("versioned-enc"))
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real, extra])
    monkeypatch.setenv("PARTBENCH_LOAD_PLUGINS", "partbench,extra-dist")
    reg = plugins.build_registry(*plugins.plugin_manager())
    from importlib.metadata import version

    assert reg.versions == {"partbench": version("partbench"), "extra-dist": "2.5.1"}
    assert reg.plugin_version(reg.encoders["versioned-enc"]) == "2.5.1"
    assert reg.plugin_version(reg.tasks["part-retrieval"]) == version("partbench")
    assert reg.plugins() == ["partbench", "extra-dist"]


def test_list_plugins_shows_versions_and_what_each_registered(monkeypatch):
    import json

    from click.testing import CliRunner

    from partbench.cli import cli

    class Broken:
        @hookimpl
        def register_tasks(self, register):
            raise RuntimeError("kaput")

    real = list(plugins.entry_points(group="partbench"))
    found = [
        *real,
        _FakeEntryPoint("extra-dist", "2.5.1", _thief("versioned-enc")),
        _FakeEntryPoint("broken-dist", "0.0.1", Broken()),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: found)
    monkeypatch.setenv("PARTBENCH_LOAD_PLUGINS", "partbench,extra-dist,broken-dist")
    plugins.reset_registry()
    result = CliRunner().invoke(cli, ["list", "plugins", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["extra-dist"]["version"] == "2.5.1"
    assert rows["extra-dist"]["encoders"] == ["versioned-enc"]
    assert rows["broken-dist"]["version"] == "0.0.1" and "kaput" in rows["broken-dist"]["problems"][0]
    assert "random-vit" in rows["partbench"]["encoders"] and "synparts" in rows["partbench"]["datasets"]
    table = CliRunner().invoke(cli, ["list", "plugins"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "extra-dist" in table.stdout and "2.5.1" in table.stdout and "versioned-enc" in table.stdout


def test_trace_prints_the_calls_the_registry_makes(monkeypatch, capsys):
    monkeypatch.setenv("PARTBENCH_TRACE_PLUGINS", "1")
    reg = plugins.build_registry(*plugins.plugin_manager(extra=[("traced", _thief("traced-enc"))]))
    assert "traced-enc" in reg.encoders
    err = capsys.readouterr().err
    for hook in ("register_encoders", "register_tasks", "register_datasets"):
        assert f"partbench: {hook} -> ['partbench:" in err
    assert "partbench: register_encoders -> ['traced']" in err
    assert "traced registered traced-enc" in err
    monkeypatch.delenv("PARTBENCH_TRACE_PLUGINS")
    plugins.build_registry(*plugins.plugin_manager())
    assert capsys.readouterr().err == ""
