"""Ranking and rendering, on stored runs whose scores are chosen by hand."""

from __future__ import annotations

import json

import pytest

from partbench import leaderboard as lb
from partbench.store import MetricValue, Store
from partbench.study import check_claims

TASKS = {"part-retrieval": "part", "part-linear": "part", "object-linear": "object"}


def add(store, encoder, task, value, ci=2.0, family="contrastive", default=True, limit=None):
    run_id = store.start(
        encoder=encoder,
        encoder_plugin="p",
        family=family,
        weights_id="w",
        task=task,
        task_plugin="p",
        level=TASKS[task],
        dataset="synparts",
        dataset_fingerprint="f",
        config={"task": {"default_options": default}, "limit": limit},
        config_hash=f"{encoder}{task}{value}",
        headline_metric="top1",
        device="cpu",
        versions={},
        seed=0,
    )
    store.finish(run_id, {"top1": MetricValue(value, value - ci, value + ci)}, n_items=10)
    return run_id


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'lb.db'}")
    for enc, (pr, pl, ol) in {"a": (60, 70, 50), "b": (50, 40, 80), "c": (59, 69, 30)}.items():
        add(s, enc, "part-retrieval", pr)
        add(s, enc, "part-linear", pl)
        add(s, enc, "object-linear", ol)
    add(s, "d", "part-retrieval", 99)  # no part-linear, no object task
    return s


def test_levels_rank_by_mean_score_and_mark_missing_and_overlaps(store):
    (part,) = lb.build(store.runs(), level="part")
    assert [r.encoder for r in part.rows] == ["a", "c", "b", "d"]  # d is incomplete: last
    a = part.rows[0]
    assert a.part_score == pytest.approx(65) and a.part_ci == [pytest.approx(63), pytest.approx(67)]
    assert part.rows[3].missing == ["object-linear", "part-linear"]
    assert a.overlaps_with == ["c"] and "b" not in a.overlaps_with  # 65 vs 64: not separable
    (obj,) = lb.build(store.runs(), level="object")
    assert [r.encoder for r in obj.rows] == ["b", "a", "c"]
    assert obj.rows[0].part_awareness == 1 - 3  # object rank 1, part rank 3


def test_all_level_averages_the_two_levels(store):
    (board,) = lb.build(store.runs(), level="all")
    top = board.rows[0]
    assert top.encoder == "b" and top.rank == 1
    assert top.score("all").value == pytest.approx((45 + 80) / 2)
    assert [r.encoder for r in board.rows][-1] == "d"  # no object score: not ranked overall
    assert board.rows[-1].rank is None
    rows = json.loads(lb.to_json([board]))
    assert {"rank", "encoder", "object_score", "part_score", "tasks"} <= set(rows[0])
    assert rows[0]["tasks"]["object-linear"] == 80


def test_default_options_and_full_runs_win_over_variants(store):
    add(store, "a", "part-linear", 10, default=False)  # a later run with non-default options
    add(store, "a", "object-linear", 5, limit=8)  # and a later quick look
    (board,) = lb.build(store.runs(), level="all")
    a = next(r for r in board.rows if r.encoder == "a")
    assert a.tasks["part-linear"] == 70 and a.tasks["object-linear"] == 50


def test_renderings_escape_and_carry_every_encoder(store):
    add(store, "<b>&evil", "part-retrieval", 40)
    add(store, "<b>&evil", "object-linear", 40)
    boards = lb.build(store.runs())
    svg = lb.to_svg(boards)
    assert "&lt;b&gt;&amp;evil" in svg and "<b>" not in svg and svg.startswith("<svg")
    md = lb.to_markdown(boards)
    assert md.count("\n| ") >= 5 and "≈" in md
    assert lb.to_csv(boards).count("\n") == 6
    assert lb.format_for(None) == "table" and lb.render(boards, "table").count("synparts") == 1


def test_study_claims_follow_the_scores(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'claims.db'}")
    scores = {  # (part, object)
        "mini-supervised": (40, 90),
        "mini-mocov3": (50, 60),
        "mini-dino": (45, 70),
        "mini-mae": (35, 50),
        "mini-ibot": (55, 65),
    }
    for enc, (part, obj) in scores.items():
        add(s, enc, "part-retrieval", part)
        add(s, enc, "object-linear", obj)
    (board,) = lb.build(s.runs())
    proj = {
        e: {"projection": MetricValue(1.0), "cls": MetricValue(2.0)} for e in ("mini-mocov3", "mini-dino")
    }
    claims = check_claims(board, proj)
    assert [c.reproduced for c in claims] == [True, True, True, True]
    scores_flipped = {"mini-mocov3": {"projection": MetricValue(3.0), "cls": MetricValue(2.0)}}
    assert not check_claims(board, scores_flipped)[3].reproduced
