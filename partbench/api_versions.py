"""The plugin API's version, what each version promised, and the adapters that keep a plugin
written for the previous version working.

API 2 (this partbench): an encoder declares ``stages`` (``Stage``: channels and stride of each
feature stage), ``pooled_kind`` and ``num_registers``; ``forward(images, stages)`` returns
``EncoderOutput(pooled, final, prefix, projection, stages)`` with maps (B, C, h, w) and 0-based
stage indices. A task factory is ``create(options)``; a task's ``views(dataset, encoder)`` and
``evaluate(features, dataset, *, device, seed, repeats)`` read ``self.options``.

API 1 (the shape before encoders had stages): an encoder declared the ViT-style fields
``patch_size``, ``embed_dim``, ``depth`` and ``num_heads``; ``forward(images, blocks)`` returned
``EncoderOutput(cls, patch_tokens, grid, projection, blocks)`` with token lists (B, N, D) and
1-based blocks. A task factory was ``create()``; a task's ``views(dataset, encoder, options)``
and ``evaluate(features, dataset, options, *, seed, repeats)`` took the options.

The promise: a change that would break a plugin raises ``API_VERSION``; additions (a new
optional field, a new name in ``partbench.api``) do not. The version before the current one is
adapted; one the manager cannot adapt is refused when the plugin registers, with a message that
names the plugin, what changed and ``MIGRATION``, never an AttributeError inside its runs.

A plugin says which version it was written for with a module-level ``PARTBENCH_API = 2`` (an
attribute of whatever object its entry point names). A plugin that says nothing predates the
declaration: its items are recognised by their shape (a factory with no parameter, an encoder
with the ViT-style fields and no stages) and adapted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from partbench.encoders.base import Encoder, EncoderOutput, Stage
from partbench.errors import PartbenchError
from partbench.specs import EncoderSpec, TaskSpec

API_VERSION = 2
ADAPTED = (1,)  # earlier versions whose plugins keep working through an adapter
DECLARATION = "PARTBENCH_API"
MIGRATION = "docs/plugins.md#migrating"
API1_ENCODER_FIELDS = ("patch_size", "embed_dim", "depth")


class PluginAPIError(PartbenchError):
    """A plugin whose shape this partbench neither speaks nor adapts."""


def declared_version(plugin: object, dist: str) -> int | None:
    """The API version ``plugin`` declares (None when it declares none); PluginAPIError when
    it declares one this partbench neither provides nor adapts."""
    value = getattr(plugin, DECLARATION, None)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and (value == API_VERSION or value in ADAPTED):
        return value
    provided = f"it provides API {API_VERSION} and adapts API " + ", ".join(map(str, ADAPTED))
    newer = isinstance(value, int) and not isinstance(value, bool) and value > API_VERSION
    advice = (
        "upgrade partbench" if newer else f"declare {DECLARATION} = {API_VERSION} once the plugin is migrated"
    )
    raise PluginAPIError(
        f"plugin '{dist}' declares {DECLARATION} = {value!r}, which this partbench does not speak: "
        f"{provided}; {advice} (migration: {MIGRATION}). Nothing of it is registered"
    )


def version_text(versions: set[int | None]) -> str:
    """What ``partbench list plugins`` shows for a distribution's declared versions."""
    shown = sorted(str(v) for v in versions if v is not None)
    if None in versions:
        shown.append("undeclared")
    return ", ".join(shown)


def _positional(fn: Callable[..., Any]) -> int | None:
    """How many positional arguments ``fn`` takes; None where it takes any number or cannot tell."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def adapt(item: Any, api: int | None, dist: str) -> tuple[Any, bool]:
    """``item`` as API 2 expects it, and whether an adapter stands in for part of it.

    PluginAPIError when it cannot be used: the registry refuses the item with its message.
    """
    if isinstance(item, EncoderSpec):
        # An encoder's shape shows only once it is loaded: every third-party loader is checked
        # then, and adapted where it was written for API 1.
        return replace(item, load=CheckedLoad(item.load, item.name, dist, api)), api in ADAPTED
    if isinstance(item, TaskSpec):
        takes = _positional(item.create)
        if takes == 0:
            if api == API_VERSION:
                raise PluginAPIError(
                    f"plugin '{dist}' declares {DECLARATION} = {API_VERSION}, but task '{item.name}' has a "
                    f"create() that takes no options: API {API_VERSION} calls create(options) with the "
                    "task's typed options (API 1 called create()); add the parameter, or declare "
                    f"{DECLARATION} = 1 to have it adapted (migration: {MIGRATION}). Task '{item.name}' "
                    "is not registered"
                )
            return replace(item, create=API1Create(item.create, item.name, dist)), True
        if api in ADAPTED:
            return replace(item, create=API1Create(item.create, item.name, dist)), True
    return item, False


def _what_changed(kind: str, name: str, dist: str, exc: BaseException) -> PluginAPIError:
    return PluginAPIError(
        f"{kind} '{name}' of plugin '{dist}', written for plugin API 1 and run through its adapter, "
        f"failed: {type(exc).__name__}: {exc}. API {API_VERSION} changed what a plugin sees (encoders: "
        "stages instead of blocks, maps instead of token lists; tasks: View(stages=...) instead of "
        f"blocks, options on self.options); migration: {MIGRATION}"
    )


class CheckedLoad:
    """A third-party encoder loader, with what it returns checked for API 2's shape."""

    def __init__(self, load: Callable[[Any], Any], name: str, dist: str, api: int | None):
        self.load, self.name, self.dist, self.api = load, name, dist, api

    def __call__(self, request: Any) -> Any:
        encoder = self.load(request)
        if hasattr(encoder, "stages"):
            return encoder
        if self.api != API_VERSION and all(hasattr(encoder, f) for f in API1_ENCODER_FIELDS):
            return API1Encoder(encoder, self.dist)
        what = "None" if encoder is None else f"a {type(encoder).__name__}"
        fields = ", ".join(API1_ENCODER_FIELDS)
        raise PluginAPIError(
            f"encoder '{self.name}' of plugin '{self.dist}' loads as {what} without 'stages': "
            f"API {API_VERSION} encoders declare stages (partbench.api.Stage: the channels and stride "
            "of each feature stage), pooled_kind and forward(images, stages) -> EncoderOutput(pooled, "
            f"final, ...); API 1's ViT-style fields ({fields}) are adapted where present, and they "
            f"are not here (migration: {MIGRATION})"
        )


class API1Encoder(Encoder):
    """An encoder written for API 1, seen through API 2: stage i is block i + 1, each with the
    encoder's width and patch stride; the pooled vector is its ``cls`` output."""

    pooled_kind = "cls"

    def __init__(self, inner: Any, dist: str):
        self.inner, self.dist = inner, dist
        self.name, self.family, self.weights_id = inner.name, inner.family, inner.weights_id
        self.mean, self.std = tuple(inner.mean), tuple(inner.std)
        self.input_size = int(inner.input_size)
        width, stride = int(inner.embed_dim), int(inner.patch_size)
        self.stages = tuple(Stage(i, f"blocks.{i}", width, stride) for i in range(int(inner.depth)))
        self.module = inner.module

    @property
    def has_projection(self) -> bool:
        return bool(getattr(self.inner, "has_projection", False))

    def forward(self, images: Any, stages: Sequence[int] = ()) -> EncoderOutput:
        self.check_stages(stages)
        try:
            out = self.inner.forward(images, [s + 1 for s in stages])
        except (AttributeError, TypeError) as exc:
            raise _what_changed("encoder", self.name, self.dist, exc) from exc
        if not isinstance(out, EncoderOutput):
            raise PluginAPIError(
                f"encoder '{self.name}' of plugin '{self.dist}' returned a {type(out).__name__} from "
                f"forward, not an EncoderOutput (migration: {MIGRATION})"
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "plugin_api": 1}


class API1Create:
    """A task factory written for API 1: called without options when it takes none; the task it
    returns is wrapped when its methods take the options as API 1's did."""

    def __init__(self, create: Callable[..., Any], name: str, dist: str):
        self.create, self.name, self.dist = create, name, dist

    def __call__(self, options: Mapping[str, Any]) -> Any:
        task = self.create() if _positional(self.create) == 0 else self.create(options)
        views = getattr(task, "views", None)
        if views is not None and _positional(views) == 3:
            return API1Task(task, options, self.name, self.dist)
        if hasattr(task, "options") and not task.options:
            task.options = dict(options)
        return task


class API1Task:
    """A task written for API 1, called as API 2 calls tasks."""

    def __init__(self, inner: Any, options: Mapping[str, Any], name: str, dist: str):
        self.inner, self.options, self.name, self.dist = inner, dict(options), name, dist
        self.source = inner.source

    def views(self, dataset: Any, encoder: Any) -> dict[str, Any]:
        try:
            return self.inner.views(dataset, encoder, self.options)
        except (AttributeError, TypeError) as exc:
            raise _what_changed("task", self.name, self.dist, exc) from exc

    def evaluate(
        self, features: Mapping[str, Any], dataset: Any, *, device: Any, seed: int, repeats: int = 1
    ) -> Any:
        try:
            return self.inner.evaluate(features, dataset, self.options, seed=seed, repeats=repeats)
        except (AttributeError, TypeError) as exc:
            raise _what_changed("task", self.name, self.dist, exc) from exc
