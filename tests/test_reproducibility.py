"""Part of the committed miniature, regenerated: the same scores within the tolerance the
reproducibility docs state (BLAS rounding moves trained probes by a few hundredths of a point
between machines and thread counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from partbench.plugins import registry
from partbench.runner import RunOptions, run
from partbench.store import Store

COMMITTED = Path(__file__).resolve().parent.parent / "leaderboard" / "mini.json"
# Points (percent) a regenerated score may differ from the committed one: the largest difference
# measured was 0.08 (mini-dino's part-linear on a 2-core AMD EPYC) with a margin.
TOLERANCE = 0.1
ENCODER = "mini-dino"
TASKS = ("part-retrieval", "object-linear")  # a pass over part crops, and a trained probe


@pytest.mark.slow  # 248 s on a loaded 2-core CPU (load average 17)
def test_part_of_the_miniature_regenerates_within_the_tolerance(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path))
    row = next(r for r in json.loads(COMMITTED.read_text()) if r["encoder"] == ENCODER)
    committed_threads = {r["device"] for r in row["runs"].values()}
    assert committed_threads == {"cpu (x86_64, 1 threads)"}  # the study's lanes run one thread each
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = Store(f"sqlite:///{tmp_path / 'mini.db'}")
        outcomes = run(registry(), store, [ENCODER], list(TASKS), RunOptions(workers=0), say=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    scores = {o.task: o.value.value for o in outcomes if o.status == "done"}
    assert set(scores) == set(TASKS), [(o.task, o.error) for o in outcomes]
    for task in TASKS:
        assert abs(scores[task] - row["tasks"][task]) <= TOLERANCE, (task, scores[task], row["tasks"][task])
