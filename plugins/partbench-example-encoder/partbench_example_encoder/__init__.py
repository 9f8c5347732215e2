"""partbench-example-encoder: a template plugin adding an encoder, a task, a dataset and a suite.

It imports only ``partbench.api``. This module is what the entry point names: it registers light
specs and imports nothing heavy; each spec's ``load`` / ``create`` imports its own module (which
imports torch or numpy) when partbench calls it, so ``partbench --help`` and ``partbench list``
stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from partbench.api import DatasetSpec, EncoderRequest, EncoderSpec, SuiteSpec, TaskOption, TaskSpec, hookimpl

# The partbench plugin API this plugin is written for (partbench.api.API_VERSION); an older
# partbench refuses it by name instead of failing inside its runs.
PARTBENCH_API = 2


def _load_hog(request: EncoderRequest) -> Any:
    from partbench_example_encoder.hog import HogEncoder

    return HogEncoder(request.name)


def _create_ncm(options: Mapping[str, Any]) -> Any:
    from partbench_example_encoder.ncm import NearestClassMean

    return NearestClassMean(options)


def _load_shapes(root: Path | None, **options: str) -> Any:
    from partbench_example_encoder.shapes import load

    return load(root, **options)


@hookimpl
def register_encoders(register: Callable[[EncoderSpec], None]) -> None:
    register(
        EncoderSpec(
            name="example-hog",
            load=_load_hog,
            family="none",
            description="example plugin: gradient-orientation histograms per 4 x 4 and 8 x 8 cell",
            weights_source="none: hand-crafted",
            version="2",
        )
    )


@hookimpl
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    register(
        TaskSpec(
            name="example-ncm",
            level="object",
            metric="top1",
            requires="images",
            create=_create_ncm,
            description="example plugin: nearest class mean of the training vectors, by cosine",
            options={
                "feature": TaskOption(
                    "embedding", "the pooled vector compared", choices=("cls", "embedding")
                ),
            },
        )
    )


@hookimpl
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    register(
        DatasetSpec(
            name="example-shapes",
            load=_load_shapes,
            capabilities=frozenset({"images", "object-masks"}),
            description="example plugin: discs, squares, triangles and crosses, drawn from a seed",
            builtin_data=True,  # generated: no folder to look for
        )
    )


@hookimpl
def register_suites(register: Callable[[SuiteSpec], None]) -> None:
    register(
        SuiteSpec(
            name="example",
            version="1",
            pairs=(("example-ncm", "example-shapes"), ("object-retrieval", "example-shapes")),
            description="example plugin: its task and a built-in one on its dataset",
        )
    )
