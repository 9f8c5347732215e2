"""Ranking and rendering, on stored runs whose per-item results are made by hand.

Every run here goes through the store's API (claim, finish with items), and every headline
score is computed from its items by partbench.metrics, as the tasks do.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from partbench.cli import cli
from partbench.cli import leaderboard as leaderboard_command
from partbench.errors import PartbenchError
from partbench.metrics.chance import chance_top1
from partbench.metrics.items import score_from_items
from partbench.metrics.resampling import level_bootstrap, paired_level_bootstrap
from partbench.ranking.boards import build
from partbench.ranking.comparisons import compare
from partbench.ranking.model import at_chance
from partbench.ranking.runs import pairable
from partbench.render import formatting, terminal
from partbench.render.formats import FORMATS, format_for, render
from partbench.render.notes import notes
from partbench.render.publish import write_all
from partbench.specs import MetricValue
from partbench.store import Store
from partbench.study import check_claims

N = 300  # items per task: big enough for paired tests to see a 4-point gain, small enough to be fast
RESAMPLES = 300  # bootstrap draws in these tests (the default is 1,000)
LEVEL = {
    "part-retrieval": "part",
    "part-linear": "part",
    "object-linear": "object",
    "object-seg": "object",
    "object-retrieval": "object",
}
METRIC = {
    "part-retrieval": "mAP",
    "part-linear": "top1",
    "object-linear": "top1",
    "object-seg": "mIoU",
    "object-retrieval": "mAP",
}


def base_items(task: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A middling encoder's items on ``task``: the same items (labels) for every encoder."""
    rng = np.random.default_rng(seed)
    label = np.arange(N) % 6
    metric = METRIC[task]
    if metric == "mAP":
        return {"ap": rng.beta(2, 3, N), "label": label}
    if metric == "top1":
        return {"correct": (rng.random(N) < 0.55).astype(np.float64), "label": label}
    union = rng.integers(50, 100, (N, 5)).astype(np.float64)
    return {"intersection": np.floor(union * rng.uniform(0.2, 0.7, (N, 5))), "union": union}


def better(items: dict[str, np.ndarray], amount: float, seed: int = 1) -> dict[str, np.ndarray]:
    """The same items, a little better on a share ``amount`` of them and never worse: a
    paired comparison sees the gain even where the marginal intervals overlap."""
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in items.items()}
    pick = rng.random(N) < amount
    if "ap" in out:
        out["ap"][pick] = np.minimum(1.0, out["ap"][pick] + 0.5)
    elif "correct" in out:
        out["correct"][pick] = 1.0
    else:
        out["intersection"][pick] = out["union"][pick] * 0.9
    return out


def noisy(items: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The same items with small symmetric changes: no real difference."""
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in items.items()}
    pick = rng.random(N) < 0.04
    if "ap" in out:
        out["ap"][pick] = rng.permutation(out["ap"][pick])
    elif "correct" in out:
        out["correct"][pick] = 1.0 - out["correct"][pick]
    else:
        out["intersection"][pick] = np.floor(out["union"][pick] * rng.uniform(0.2, 0.7, (pick.sum(), 5)))
    return out


_HASH = iter(range(10**9))


def _counted(metric: str, items: dict[str, np.ndarray]) -> int:
    """The items a result is computed over, as the store counts them: queries with an AP for
    mAP and AP, every row otherwise."""
    if metric in ("mAP", "AP"):
        return int(np.isfinite(items["ap"]).sum())
    return len(next(iter(items.values())))


def add(
    store: Store,
    encoder: str,
    task: str,
    items: dict[str, np.ndarray] | None = None,
    *,
    value: float | None = None,
    ci: float = 3.0,
    family: str = "contrastive",
    dataset: str = "synparts",
    default: bool = True,
    limit: int | None = None,
    level: str | None = None,
    metric: str | None = None,
    chance: float | None = None,
    details: dict | None = None,
) -> int:
    """Store one finished run; its score is computed from ``items`` (else ``value`` is taken,
    as a run stored before per-item results were kept). ``chance``: the headline metric's
    chance level as the task would store it (None: a run from before chance was recorded)."""
    metric = metric or METRIC[task]
    run_id = store.claim(
        f"h{next(_HASH)}",
        encoder=encoder,
        encoder_plugin="p",
        family=family,
        weights_id=f"sha256:{encoder}",
        task=task,
        task_plugin="p",
        level=level or LEVEL[task],
        dataset=dataset,
        dataset_fingerprint="fp",
        config={"task": {"options": {}, "default_options": default}, "limit": limit},
        headline_metric=metric,
        device="cpu",
        versions={"partbench": "test"},
        seed=0,
    )
    assert run_id is not None
    if items is not None:
        value = score_from_items(metric, items)
        _, lo, hi = level_bootstrap([(metric, items)], n_resamples=200)
    else:
        lo, hi = value - ci, value + ci  # type: ignore[operator]
    store.finish(
        run_id,
        {metric: MetricValue(value, lo, hi)},
        n_items=N if items is None else _counted(metric, items),
        items=items,  # type: ignore[arg-type]
        chance=None if chance is None else {metric: chance},
        details=details,
    )
    return run_id


TASKS = ("part-retrieval", "part-linear", "object-linear", "object-seg")


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """a: clearly better than b on every task (paired), though their intervals overlap;
    c: b with noise (tied with b); d: lacks part-linear. Built once; each test gets a copy."""
    folder = tmp_path_factory.mktemp("template")
    s = Store(f"sqlite:///{folder / 'lb.db'}", pending_dir=folder / "pending")
    for i, task in enumerate(TASKS):
        b = base_items(task, seed=i)
        add(s, "b", task, b, family="masked-image-modeling")
        add(s, "c", task, noisy(b, seed=10 + i), family="supervised")
        add(s, "a", task, better(b, 0.06, seed=20 + i))
        if task != "part-linear":
            add(s, "d", task, better(b, 0.5, seed=30 + i), family="none")
    s.engine.dispose()
    return folder / "lb.db"


@pytest.fixture
def store(template_db, tmp_path):
    shutil.copy(template_db, tmp_path / "lb.db")
    return Store(f"sqlite:///{tmp_path / 'lb.db'}")


def boards(store, level="all", **kw):
    return build(store.runs(), level=level, items=store, n_resamples=RESAMPLES, **kw)


# --------------------------------------------------------------------------- honest ranks


def test_level_interval_is_resampled_over_every_tasks_items(store):
    (board,) = boards(store)
    a = next(r for r in board.rows if r.encoder == "a")
    runs = {r.task: r for r in store.runs() if r.encoder == "a"}
    for level in ("object", "part"):
        tasks = [(METRIC[t], store.items(runs[t].id)) for t in sorted(runs) if LEVEL[t] == level]
        mean, lo, hi = level_bootstrap(tasks, n_resamples=RESAMPLES)
        s = a.scores[level]
        assert s.paired and s.value == pytest.approx(mean)
        assert (s.low, s.high) == (pytest.approx(lo), pytest.approx(hi))
        # not the mean of the tasks' bounds: averaging resampled tasks narrows the interval
        widths = [runs[t].headline.ci_high - runs[t].headline.ci_low for t in runs if LEVEL[t] == level]
        assert hi - lo < np.mean(widths)


def test_neighbours_are_compared_paired_and_ties_share_a_rank(store):
    (part,) = boards(store, "part")
    order = [r.encoder for r in part.rows]
    assert order[0] == "a" and set(order[1:3]) == {"b", "c"} and order[3] == "d"
    a, second, third, d = part.rows
    # a's interval overlaps b's, yet the paired difference says a is higher
    assert a.scores["part"].overlaps(second.scores["part"])
    first = part.comparisons[0]
    assert first.paired and first.low > 0 and not first.tie
    ids = {(r.encoder, r.task): r.id for r in store.runs()}
    side = [
        [(METRIC[t], store.items(ids[(e, t)])) for t in ("part-linear", "part-retrieval")]
        for e in ("a", first.b)
    ]
    diff, lo, hi = paired_level_bootstrap(*side, n_resamples=RESAMPLES)
    assert (first.diff, first.low, first.high) == (pytest.approx(diff), pytest.approx(lo), pytest.approx(hi))
    assert formatting.rank_text(a, "part") == "1"
    assert formatting.rank_text(second, "part") == formatting.rank_text(third, "part") == "2="
    assert second.standings["part"].tied_with == [third.encoder]
    # d lacks part-linear: ranked after, no tie claimed
    assert d.rank == 4 and formatting.rank_text(d, "part") == "4*"
    assert part.comparisons[1].tie and len(part.comparisons) == 2  # b/c vs d: different columns
    text = " ".join(notes(part))
    assert "2= (b, c)" in text or "2= (c, b)" in text
    assert "*:" in text


def test_overall_rank_weighs_levels_equally_and_awareness_uses_shared_ranks(store):
    (board,) = boards(store)
    a = board.rows[0]
    assert a.encoder == "a" and a.rank == 1
    assert a.scores["all"].value == pytest.approx((a.object_score + a.part_score) / 2)
    assert a.scores["all"].paired and a.scores["all"].low < a.scores["all"].value < a.scores["all"].high
    assert board.rows[-1].encoder == "d" and formatting.rank_text(board.rows[-1], "all").endswith("*")
    for r in board.rows:
        if r.object_rank is not None and r.part_rank is not None:
            assert r.part_awareness == r.object_rank - r.part_rank


def test_runs_without_items_fall_back_and_are_marked_not_paired(store):
    for task in TASKS:
        add(store, "old", task, None, value=60.0, ci=4.0)
    (part,) = boards(store, "part")
    old = next(r for r in part.rows if r.encoder == "old")
    assert not old.scores["part"].paired and old.scores["part"].ci == [56.0, 64.0]
    assert formatting.rank_text(old, "part").endswith("†")
    comp = next(c for c in part.comparisons if "old" in (c.a, c.b))
    assert not comp.paired and "no per-item results" in comp.reason
    assert any(line.startswith("†") for line in notes(part))


def test_runs_on_other_items_are_not_paired(store):
    add(store, "e", "part-retrieval", base_items("part-retrieval", 0), limit=50)
    runs = {r.encoder: r for r in store.runs() if r.task == "part-retrieval"}
    assert (
        pairable(runs["e"], runs["b"], store.items(runs["e"].id), store.items(runs["b"].id))
        == "different --limit"
    )


def test_default_options_and_full_runs_win_over_variants(store):
    add(store, "a", "part-linear", None, value=10.0, default=False)  # later, non-default options
    add(store, "a", "object-linear", None, value=5.0, limit=8)  # and a later quick look
    (board,) = boards(store)
    a = next(r for r in board.rows if r.encoder == "a")
    assert a.tasks["part-linear"] > 50 and a.tasks["object-linear"] > 50


def test_compare_prints_paired_differences_task_by_task_and_per_level(store):
    comps = compare(store.runs(), "a", "b", items=store, n_resamples=RESAMPLES)
    tasks = [c.columns[0] for c in comps if c.metric != "score"]
    assert tasks == ["object-linear", "object-seg", "part-linear", "part-retrieval"]
    for c in comps:
        assert c.paired and c.low is not None and c.low <= c.diff <= c.high
        assert c.verdict == "a higher"
    levels = [c for c in comps if c.metric == "score"]
    assert [c.level for c in levels] == ["object", "part"]
    one = compare(store.runs(), "b", "c", task="part-linear", items=store, n_resamples=RESAMPLES)
    assert len(one) == 1 and one[0].tie and one[0].verdict == "no clear difference"
    with pytest.raises(PartbenchError, match="no finished runs of encoder 'zz'"):
        compare(store.runs(), "a", "zz", items=store)
    out = terminal.render_text(terminal.comparison(comps, "a", "b"), 80)
    assert "part-retrieval" in out and "A higher" in out and "A (a) against B (b)" in out
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out


# --------------------------------------------------------------------------- object-only data


def test_an_object_only_dataset_is_ranked_in_the_default_view(store):
    for enc, amount in (("a", 0.3), ("b", 0.0)):
        add(store, enc, "object-linear", better(base_items("object-linear", 7), amount), dataset="cifar10")
    by_name = {b.name: b for b in boards(store)}
    cifar = by_name["cifar10"]
    assert cifar.levels == ("object",) and [r.rank for r in cifar.rows] == [1, 2]
    assert "object level only (no part tasks)" in render([cifar], "markdown")
    svg = render(list(by_name.values()), "svg")
    assert "cifar10: object level only (no part tasks), not plotted." in svg
    table = terminal.render_text(terminal.leaderboard([cifar]), 80)
    assert "object level only" in table and "part score" not in table
    assert [b.name for b in boards(store, "part")] == ["synparts"]
    assert [b.name for b in boards(store, "object")] == ["cifar10", "synparts"]


# --------------------------------------------------------------------------- terminal tables


def _fits(text: str, width: int = 80) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize(
    ("level", "wide"), [("all", False), ("part", False), ("object", False), ("all", True)]
)
def test_terminal_tables_fit_80_columns(store, level, wide):
    add(store, "timm:vit_base_patch14_dinov2.lvd142m", "part-retrieval", base_items("part-retrieval"))
    bs = boards(store, level)
    text = terminal.render_text(terminal.leaderboard(bs, width=80, wide=wide), 80)
    _fits(text)
    assert "vit_base_patch14_dinov2.lvd142m" in text.replace("\n", "").replace(" ", "") or "timm:" in text
    shown = ("object", "part") if level == "all" else (level,)
    for r in bs[0].rows:
        for lv in shown:
            if lv in r.scores:
                assert f"{r.scores[lv].value:.1f}" in text and f"{r.scores[lv].low:.1f}–" in text
    if level != "all" or wide:  # one column per task
        assert all(c.task.split("-")[-1] in text for c in bs[0].shown_columns)


def test_runs_and_tasks_tables_fit_80_columns(store):
    from partbench.listing import describe, run_record
    from partbench.plugins import registry

    records = [run_record(r) for r in store.runs()]
    text = terminal.render_text(terminal.runs_table(records, width=80), 80)
    _fits(text)
    assert "part-retrieval" in text and "object-seg" in text and "--wide" in text and "--id N" in text
    tasks = terminal.render_text(terminal.tasks_table(describe(registry(), "tasks"), width=80), 80)
    _fits(tasks)
    assert "feature=embedding" in tasks and "include_self=true" in tasks
    from types import SimpleNamespace as Outcome

    common = {"dataset": "synparts", "cached": False}
    outcomes = [
        Outcome(
            encoder="timm:vit_base_patch14_dinov2.lvd142m",
            task="part-retrieval",
            status="done",
            run_id=7,
            metric="mAP",
            value=MetricValue(41.25, 39.5, 43.0),
            error=None,
            timing={"end_to_end_images_per_second": 812.0},
            **common,
        ),
        Outcome(
            encoder="mini-mae",
            task="object-seg",
            status="failed",
            run_id=8,
            metric="mIoU",
            value=None,
            error="boom",
            timing={},
            **common,
        ),
    ]
    ran = terminal.render_text(terminal.outcomes_table(outcomes, width=80), 80)
    _fits(ran)
    assert "mAP 41.2" in ran and "39.5–43.0" in ran and "failed (reason above)" in ran


# --------------------------------------------------------------------------- formats agree


class _Cells(HTMLParser):
    """The rows of the page's tables of results: (data-encoder, [each cell's data-sort])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str | None]]] = []
        self.tables: list[str] = []  # "board" or "other", innermost last

    def _in_board(self) -> bool:
        return self.tables == ["board"]

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append("board" if "board" in (a.get("class") or "").split() else "other")
        elif self._in_board() and tag == "tr" and "data-encoder" in a:
            self.rows.append((a["data-encoder"], []))
        elif self._in_board() and tag == "td" and self.rows:
            self.rows[-1][1].append(a.get("data-sort"))

    def handle_endtag(self, tag):
        if tag == "table":
            self.tables.pop()


def test_every_format_agrees_on_ranks_and_scores(store):
    add(store, "old", "part-retrieval", None, value=40.0)
    bs = boards(store)
    (board,) = bs
    truth = [(r.encoder, formatting.rank_text(r, "all"), r.object_score, r.part_score) for r in board.rows]

    data = json.loads(render(bs, "json"))
    assert [(d["encoder"], d["rank_text"], d["object_score"], d["part_score"]) for d in data] == truth

    rows = list(csv.DictReader(io.StringIO(render(bs, "csv"))))
    got = [(r["encoder"], r["rank_text"], r["object_score"], r["part_score"]) for r in rows]
    assert got == [(e, t, "" if o is None else repr(o), "" if p is None else repr(p)) for e, t, o, p in truth]

    md_rows = [
        line.split(" | ") for line in render(bs, "markdown").splitlines() if re.match(r"\| \d|\| –", line)
    ]
    assert [(c[0][2:], c[1], c[3].split()[0], c[4].split()[0]) for c in md_rows] == [
        (t, e, _one(o), _one(p)) for e, t, o, p in truth
    ]

    parser = _Cells()
    parser.feed(render(bs, "html"))
    html_rows = [(enc, cells[0], cells[3], cells[4]) for enc, cells in parser.rows]
    assert [(e, r.rank) for e, r in zip([h[0] for h in html_rows], board.rows, strict=True)] == [
        (r.encoder, r.rank) for r in board.rows
    ]
    assert [(h[0], h[2], h[3]) for h in html_rows] == [
        (e, "" if o is None else repr(o), "" if p is None else repr(p)) for e, _, o, p in truth
    ]

    svg = ET.fromstring(render(bs, "svg"))
    points = {
        g.get("data-encoder"): (g.get("data-rank"), float(g.get("data-object")), float(g.get("data-part")))
        for g in svg.iter("{http://www.w3.org/2000/svg}g")
    }
    assert points == {e: (t, o, p) for e, t, o, p in truth if o is not None and p is not None}

    table = terminal.render_text(terminal.leaderboard(bs, width=80), 80)
    for e, t, o, p in truth:
        line = next(line for line in table.splitlines() if re.search(rf"\s{re.escape(e)}\s", line))
        assert line.split()[0] == t and _one(o) in line and _one(p) in line


def _one(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


# --------------------------------------------------------------------------- chance

SIX = np.arange(N) % 6  # six classes of 50 items: always guessing one class is right 1 in 6


def hits(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Probe items with exactly ``n`` of the N correct, spread over the classes."""
    correct = np.zeros(N)
    correct[np.random.default_rng(seed).permutation(N)[:n]] = 1.0
    return {"correct": correct, "label": SIX}


@pytest.fixture
def chance_store(tmp_path):
    """guess: right 1 in 6, its interval straddles chance; sharp: right 55 in 100, clear of it;
    old: near chance too, but stored before chance levels were (chance None)."""
    s = Store(f"sqlite:///{tmp_path / 'chance.db'}")
    level = chance_top1(SIX, SIX)
    for i, task in enumerate(("part-linear", "object-linear")):
        add(s, "guess", task, hits(50, seed=i), chance=level)
        add(s, "sharp", task, hits(165, seed=i), chance=level)
        add(s, "old", task, None, value=16.0, ci=4.0)
    return s


class _Board(HTMLParser):
    """The page's board tables: the chance row's cells, and each result row's cells as
    (class, data-chance, text). Provenance tables, nested in the encoder's cell, are skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.chance: list[str] = []
        self.rows: dict[str, list[tuple[str, str | None, str]]] = {}
        self.row: list | None = None
        self.cell: list | None = None
        self.nested = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "prov" in (a.get("class") or ""):
            self.nested += 1
        if self.nested:
            return
        if tag == "tr" and a.get("class") == "chance":
            self.row = self.chance
        elif tag == "tr" and "data-encoder" in a:
            self.row = self.rows.setdefault(a["data-encoder"], [])
        elif tag in ("td", "th") and self.row is not None:
            self.cell = [a.get("class") or "", a.get("data-chance"), ""]

    def handle_data(self, data):
        if self.cell is not None and not self.nested:
            self.cell[2] += data

    def handle_endtag(self, tag):
        if self.nested:
            self.nested -= tag == "table"
            return
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append(self.cell[2] if self.row is self.chance else tuple(self.cell))
            self.cell = None
        elif tag == "tr":
            self.row = None


def test_a_score_at_chance_is_marked_in_every_format_and_one_clear_of_it_is_not(chance_store):
    s = chance_store
    stored = {(r.encoder, r.task): r.chance for r in s.runs()}
    level = stored[("guess", "part-linear")]["top1"]
    assert stored[("sharp", "object-linear")] == {"top1": level} and stored[("old", "part-linear")] is None
    assert level == pytest.approx(100 / 6)
    bs = boards(s)
    (board,) = bs
    rows = {r.encoder: r for r in board.rows}
    guess, sharp, old = rows["guess"], rows["sharp"], rows["old"]
    # the interval straddles chance: low below it, high above it
    ci = guess.task_ci["part-linear"]
    assert ci[0] < level < ci[1] and guess.task_at_chance("part-linear")
    assert sharp.task_ci["part-linear"][0] > level and not sharp.task_at_chance("part-linear")
    assert old.task_ci["part-linear"][0] < level and not old.task_at_chance("part-linear")  # chance unknown
    for lv in ("object", "part", "all"):
        assert guess.scores[lv].chance == level and guess.scores[lv].at_chance  # the mean of equal levels
        assert sharp.scores[lv].chance == level and not sharp.scores[lv].at_chance
        assert old.scores[lv].chance is None and not old.scores[lv].at_chance
    shown = f"{level:.1f}"
    tasks = ("object-linear", "part-linear")

    # JSON: the stored chance per task and per score, and at_chance for each
    data = {d["encoder"]: d for d in json.loads(render(bs, "json"))}
    for k in tasks:
        assert data["guess"]["task_chance"][k] == level and data["guess"]["task_at_chance"][k] is True
        assert data["sharp"]["task_chance"][k] == level and data["sharp"]["task_at_chance"][k] is False
        assert data["old"]["task_chance"][k] is None and data["old"]["task_at_chance"][k] is False
        assert data["guess"]["runs"][k]["chance"] == level
    for key in ("score", "object", "part"):
        assert data["guess"][f"{key}_chance"] == level and data["guess"][f"{key}_at_chance"] is True
        assert data["sharp"][f"{key}_chance"] == level and data["sharp"][f"{key}_at_chance"] is False
        assert data["old"][f"{key}_chance"] is None and data["old"][f"{key}_at_chance"] is False

    # CSV: the same, as columns
    got = {r["encoder"]: r for r in csv.DictReader(io.StringIO(render(bs, "csv")))}
    for k in tasks:
        assert float(got["guess"][f"{k} chance"]) == level and got["guess"][f"{k} at_chance"] == "True"
        assert got["sharp"][f"{k} at_chance"] == "False"
        assert got["old"][f"{k} chance"] == "" and got["old"][f"{k} at_chance"] == "False"
    for key in ("score", "object", "part"):
        assert got["guess"][f"{key}_at_chance"] == "True" and got["sharp"][f"{key}_at_chance"] == "False"
        assert float(got["guess"][f"{key}_chance"]) == level and got["old"][f"{key}_chance"] == ""

    # Markdown: a chance row beneath the header, ≈ after each score at chance, a note saying why
    md = render(bs, "markdown").splitlines()
    header = next(i for i, line in enumerate(md) if line.startswith("| rank |"))
    chance_row = [c.strip() for c in md[header + 2].strip("|").split("|")]
    assert chance_row == ["", "chance", "", shown, shown, "", shown, shown]
    cells = {
        c[1].strip(): [x.strip() for x in c]
        for c in (line.strip("|").split("|") for line in md[header + 3 :] if line.startswith("| "))
    }
    assert all(cells["guess"][i].startswith(f"{shown}≈ [") for i in (3, 4, 6, 7))
    assert not any("≈" in c for c in cells["sharp"] + cells["old"])
    assert any(line.startswith("≈: not clearly above chance") for line in md)
    assert any(line.startswith("chance (the row beneath the header)") for line in md)

    # HTML: the chance row in the head, the class at-chance on exactly guess's scores
    page = _Board()
    page.feed(render(bs, "html"))
    assert page.chance == ["", "chance", "", shown, shown, "", shown, shown]
    scores = {e: [c for c in cells if "num" in c[0]] for e, cells in page.rows.items()}
    assert all("at-chance" in c[0] and c[2].startswith(f"{shown}≈") for c in scores["guess"][:2])
    assert ["at-chance" in c[0] for c in scores["guess"]] == [True, True, False, True, True]  # awareness
    assert not any("at-chance" in c[0] or "≈" in c[2] for c in scores["sharp"] + scores["old"])
    assert [c[1] for c in scores["guess"] if c[1]] == [repr(level)] * 4
    assert not any(c[1] for c in scores["old"])

    # SVG: hollow point and the data attributes
    svg = ET.fromstring(render(bs, "svg"))
    points = {g.get("data-encoder"): g for g in svg.iter("{http://www.w3.org/2000/svg}g")}
    for lv in ("object", "part"):
        assert points["guess"].get(f"data-{lv}-at-chance") == "true"
        assert points["sharp"].get(f"data-{lv}-at-chance") == "false"
        assert points["old"].get(f"data-{lv}-at-chance") == "false"
        assert (
            float(points["guess"].get(f"data-{lv}-chance")) == level
            and points["old"].get(f"data-{lv}-chance") == ""
        )
    circle = "{http://www.w3.org/2000/svg}circle"
    assert points["guess"].find(circle).get("class") == "at-chance"
    assert points["sharp"].find(circle).get("class") is None
    legend = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "chance"]
    assert f"object {shown}" in legend and f"part {shown}" in legend

    # the terminal, at 80 columns and per task
    for level_, wide in (("all", False), ("all", True), ("part", False)):
        table = terminal.render_text(terminal.leaderboard(boards(s, level_), width=80, wide=wide), 80)
        _fits(table)
        lines = table.splitlines()
        chance_line = next(line for line in lines if line.split()[:1] == ["chance"])
        assert chance_line.split()[1:] == [shown] * (len(chance_line.split()) - 1)
        by = {
            e: next(line for line in lines if re.search(rf"\s{e}\s", line)) for e in ("guess", "sharp", "old")
        }
        assert f"{shown}≈" in by["guess"] and "≈" not in by["sharp"] + by["old"]
        assert "≈: not clearly above chance" in table.replace("\n", " ")


def test_at_chance_means_the_interval_reaches_chance_or_lies_below_it():
    assert at_chance(18.0, [15.0, 21.0], 16.7)  # straddles
    assert at_chance(10.0, [8.0, 12.0], 16.7)  # wholly below
    assert at_chance(18.0, [16.7, 21.0], 16.7)  # touches
    assert not at_chance(20.0, [17.0, 23.0], 16.7)  # clear of it
    assert at_chance(16.0, [None, None], 16.7) and not at_chance(17.0, None, 16.7)  # no interval
    assert not at_chance(10.0, [8.0, 12.0], None) and not at_chance(None, None, 16.7)  # unknown


def test_a_bound_that_rounds_to_zero_still_shows_its_side_of_zero():
    assert formatting.difference_text(-0.4, -0.7, -0.04) == "-0.4 [-0.7, -0.04]"
    assert formatting.difference_text(0.3, 0.004, 0.6) == "+0.3 [+0.004, +0.6]"
    assert formatting.difference_text(1.25, 0.96, 1.54) == "+1.2 [+1.0, +1.5]"  # one decimal otherwise
    assert formatting.difference_text(0.0) == "+0.0" and formatting.signed(-0.05) == "-0.1"


def test_a_board_without_chance_levels_shows_dashes_and_no_marks(store):
    bs = boards(store)
    md = render(bs, "markdown")
    chance_row = next(line for line in md.splitlines() if "| chance |" in line)
    assert [c.strip() for c in chance_row.strip("|").split("|")][3:] == ["–", "–", "", "–", "–", "–", "–"]
    assert "≈" not in md and "Chance –: not stored" in md
    data = json.loads(render(bs, "json"))
    assert all(
        d["task_chance"][k] is None and d["task_at_chance"][k] is False for d in data for k in d["tasks"]
    )
    assert "≈" not in terminal.render_text(terminal.leaderboard(bs, width=80, wide=True), 80)


def test_runs_on_other_items_show_the_range_of_their_chance_levels(chance_store):
    s = chance_store
    five = np.arange(N) % 5
    add(s, "small", "part-linear", {"correct": np.ones(N), "label": five}, limit=100, chance=20.0)
    (board,) = boards(s, "part")
    assert board.column_chance("part-linear") == (pytest.approx(100 / 6), 20.0)
    small = next(r for r in board.rows if r.encoder == "small")
    assert small.scores["part"].chance == 20.0  # its own run's, not the column's
    md = render([board], "markdown")
    assert "| chance |  | 16.7–20.0 | 16.7–20.0 |" in md
    table = terminal.render_text(terminal.leaderboard([board], width=80), 80)
    _fits(table)
    assert "16.7–20.0" in table


def test_the_note_says_what_each_interval_resamples_as_the_task_stored_it(tmp_path):
    """Retrieval resamples queries against a fixed gallery; the note quotes what the run
    stored, here a real retrieval result on features unrelated to the labels (near chance)."""
    import torch

    from partbench.datasets.base import Dataset
    from partbench.features import Features
    from partbench.tasks.retrieval import Retrieval

    class Toy(Dataset):
        name = "toy"
        object_classes = part_classes = tuple("abcdef")

    labels = SIX[:120]
    x = torch.randn(120, 16, generator=torch.Generator().manual_seed(0))
    result = Retrieval("keypoints", {"feature": "embedding", "include_self": True}).evaluate(
        {"gallery": Features(arrays={"embedding": x}, labels=labels, grid=(1, 1))},
        Toy(),
        device=torch.device("cpu"),
        seed=0,
    )
    said = result.details["interval"]
    assert "queries" in said
    s = Store(f"sqlite:///{tmp_path / 'r.db'}")
    for encoder in ("random", "other"):
        run_id = s.claim(
            f"r-{encoder}",
            encoder=encoder,
            encoder_plugin="p",
            family="none",
            weights_id="w",
            task="part-retrieval",
            task_plugin="p",
            level="part",
            dataset="toy",
            dataset_fingerprint="fp",
            config={"task": {"options": {}, "default_options": True}, "limit": None},
            headline_metric="mAP",
            device="cpu",
            versions={},
            seed=0,
        )
        s.finish(
            run_id,
            result.metrics,
            n_items=result.n_items,
            details=result.details,
            items=result.items,
            chance=result.chance,
        )
    add(
        s,
        "probe",
        "part-linear",
        hits(100),
        dataset="toy",
        chance=100 / 6,
        details={"interval": "test items resampled"},
    )
    (board,) = boards(s)
    note = next(line for line in notes(board) if line.startswith("What each task's interval resamples"))
    assert f"part-retrieval: {said.rstrip('.')}." in note and "part-linear: test items resampled." in note
    random = next(r for r in board.rows if r.encoder == "random")
    assert random.task_chance["part-retrieval"] == result.chance["mAP"]
    assert random.task_at_chance("part-retrieval")  # random features: not clear of chance
    for fmt in ("markdown", "html"):
        assert f"part-retrieval: {said.rstrip('.')}." in render([board], fmt)
    table = " ".join(terminal.render_text(terminal.leaderboard([board], width=80), 80).split())
    assert f"part-retrieval: {said.rstrip('.')}." in table


# --------------------------------------------------------------------------- escaping

HOSTILE = "<img src=x onerror=alert(1)>|=cmd\x01\n*b*"


def test_names_from_the_database_are_text_in_every_format(store):
    add(store, HOSTILE, "part-retrieval", base_items("part-retrieval"), family="none")
    add(store, HOSTILE, "object-linear", base_items("object-linear"), family="none")
    add(store, "=HYPERLINK(1)", "object-linear", base_items("object-linear"), family="none")
    bs = boards(store)
    md = render(bs, "markdown")
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;\\|=cmd" in md
    assert all(
        line.count(" | ") == md.splitlines()[2].count(" | ")
        for line in md.splitlines()
        if "alert" in line and line.startswith("|")
    )
    cells = [row for row in csv.reader(io.StringIO(render(bs, "csv")))]
    encoders = [row[2] for row in cells[1:]]
    assert "'=HYPERLINK(1)" in encoders and not any(e.startswith(("=", "+", "@")) for e in encoders)
    svg = render(bs, "svg")
    root = ET.fromstring(svg)  # well-formed: the \x01 is dropped
    assert not [e for e in root.iter() if e.tag.endswith("img")]
    assert "\x01" not in svg
    html = render(bs, "html")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    json_rows = json.loads(render(bs, "json"))
    assert HOSTILE in [r["encoder"] for r in json_rows]
    _fits(terminal.render_text(terminal.leaderboard(bs, width=80), 80))


def test_write_all_writes_the_committed_set(store, tmp_path):
    written = write_all(boards(store), tmp_path / "out", "partbench study mini --output-dir leaderboard")
    assert sorted(p.name for p in written) == ["mini.html", "mini.json", "mini.md", "mini.svg"]
    assert "partbench study mini --output-dir leaderboard" in (tmp_path / "out" / "mini.md").read_text()


def test_the_study_writes_its_set_without_a_browser_and_drops_an_older_picture(store, tmp_path, monkeypatch):
    from partbench.study import StudyReport, write

    monkeypatch.setenv("PARTBENCH_CHROMIUM", str(tmp_path / "no-such-chromium"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mini.png").write_bytes(b"an older run's picture")
    (board,) = boards(store)
    written = write(StudyReport(board, claims=[], outcomes=[]), out, "partbench study mini --output-dir out")
    assert sorted(p.name for p in written) == [
        "mini-claims.json",
        "mini.html",
        "mini.json",
        "mini.md",
        "mini.svg",
    ]
    assert not (out / "mini.png").exists()
    assert "| a |" in (out / "mini.md").read_text()


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("with_dir", [False, True])
def test_the_study_says_where_its_runs_and_report_went(store, tmp_path, monkeypatch, with_dir):
    import partbench.study as mini
    from partbench.study import StudyReport

    (board,) = boards(store)
    monkeypatch.setattr(mini, "run_mini_study", lambda *a, **k: StudyReport(board, claims=[], outcomes=[]))
    monkeypatch.setenv("PARTBENCH_CHROMIUM", str(tmp_path / "no-such-chromium"))
    db = tmp_path / "lb.db"
    args = ["study", "mini", "--db", f"sqlite:///{db}"]
    args += ["--output-dir", str(tmp_path / "o")] if with_dir else []
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    told = f"The runs are stored in {db}" in res.output
    assert told != with_dir  # said once, where no report file was written
    assert ("Wrote " in res.output) == with_dir


def test_the_cli_offers_exactly_the_registered_formats_and_their_suffixes():
    option = next(p for p in leaderboard_command.params if p.name == "fmt")
    assert list(option.type.choices) == list(FORMATS)
    for f in FORMATS.values():
        assert f.suffixes, f.name
        for suffix in f.suffixes:
            assert format_for(Path(f"board{suffix.upper()}")) == f.name
    assert format_for(None) == format_for(Path("board")) == format_for(Path("board.pdf")) == "table"
    with pytest.raises(ValueError, match="unknown format 'pdf'; known formats: table, markdown"):
        render([], "pdf")


def test_cli_leaderboard_compare_and_formats(store, tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_DB", store.url)
    runner = CliRunner()
    out = runner.invoke(cli, ["leaderboard", "--level", "part"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert "2=" in out.output and "…" not in out.output
    for fmt in ("markdown", "csv", "json", "html", "svg"):
        target = tmp_path / f"lb.{fmt}"
        res = runner.invoke(cli, ["leaderboard", "--format", fmt, "--output", str(target)])
        assert res.exit_code == 0, res.output
        assert target.stat().st_size > 100
    res = runner.invoke(cli, ["leaderboard", "--output", str(tmp_path / "x.html")])
    assert res.exit_code == 0 and (tmp_path / "x.html").read_text().startswith("<!DOCTYPE html>")
    res = runner.invoke(cli, ["compare", "a", "b", "--task", "part-linear"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "A higher" in res.output and "part-linear" in res.output
    res = runner.invoke(cli, ["compare", "a", "nobody"])
    assert res.exit_code == 1 and "no finished runs of encoder 'nobody'" in res.output


# --------------------------------------------------------------------------- suites


def test_builtin_suites_name_only_pairs_their_datasets_support():
    from partbench import suites
    from partbench.plugins import registry

    reg = registry()
    assert suites.suites(reg)["synparts"].plugin == "partbench"
    assert suites.suite_pairs(reg, "synparts") == [(t, "synparts") for t in suites.BUILTIN_TASKS]
    study = suites.suite_pairs(reg, "study")
    assert ("part-retrieval", "coco-keypoints") in study and ("object-seg", "pascal-object") in study
    for task, dataset in study:  # suite() checked this too; say it here in plain terms
        assert reg.tasks[task].requires in reg.datasets[dataset].capabilities
    missing = dict(suites.missing_data(reg, "study"))
    assert set(missing) == set(suites.STUDY.datasets)  # no real data in a test's PARTBENCH_HOME
    assert "partbench data fetch cub200" in missing["cub200"]
    assert "cocodataset.org" in missing["coco-keypoints"] and "--data-root" in missing["lip"]
    assert suites.missing_data(reg, "synparts") == []
    with pytest.raises(PartbenchError, match=r"unknown suite 'stdy'.*did you mean 'study'"):
        suites.suite_pairs(reg, "stdy")


class _Dist:
    name, version = "suite-plugin", "0.1"


class _EntryPoint:
    """A third party's entry point in the ``partbench`` group, as installed metadata shows it."""

    name, dist = "suites", _Dist()

    def __init__(self, module):
        self.module = module

    def load(self):
        return self.module


def _suite_plugin(monkeypatch, *suites_):
    import types

    from partbench import plugins
    from partbench.hookspecs import hookimpl

    module = types.ModuleType("suite_plugin")

    @hookimpl
    def register_suites(register):
        for spec in suites_:
            register(spec)

    module.register_suites = register_suites
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real(group=group), _EntryPoint(module)])
    monkeypatch.setenv("PARTBENCH_LOAD_PLUGINS", "partbench,suite-plugin")
    plugins.reset_registry()
    return plugins.registry()


def test_a_plugin_suite_ranks_over_exactly_its_pairs(store, monkeypatch, tmp_path):
    from partbench.specs import SuiteSpec
    from partbench.suites import suite

    mine = SuiteSpec(
        "mine",
        "2",
        (("part-retrieval", "synparts"), ("part-linear", "synparts"), ("object-linear", "synparts")),
    )
    reg = _suite_plugin(monkeypatch, mine)
    spec = suite(reg, "mine")
    assert spec.plugin == "suite-plugin"
    (board,) = build(store.runs(), suite=spec, registry=reg, items=store, n_resamples=RESAMPLES)
    assert board.kind == "suite" and formatting.title(board) == "mine v2"
    assert [c.key for c in board.columns] == [
        "part-retrieval@synparts",
        "part-linear@synparts",
        "object-linear@synparts",
    ]
    assert all("object-seg" not in r.tasks for r in board.rows)
    d = next(r for r in board.rows if r.encoder == "d")
    assert d.missing == ["part-linear@synparts"] and formatting.rank_text(d, "all").endswith("*")
    assert "d lacks 1 of 3: part-linear@synparts." in notes(board)
    monkeypatch.setenv("PARTBENCH_DB", store.url)
    res = CliRunner().invoke(cli, ["leaderboard", "--suite", "mine"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "suite mine v2" in res.output and "d lacks 1 of 3" in res.output
    _fits(res.output)
    res = CliRunner().invoke(cli, ["leaderboard", "--suite", "study"])
    assert res.exit_code == 1 and "no finished runs in suite 'study'" in res.output


def test_a_suite_with_a_pair_its_dataset_cannot_serve_is_refused(monkeypatch):
    from partbench.specs import SuiteSpec
    from partbench.suites import suite

    reg = _suite_plugin(monkeypatch, SuiteSpec("bad", "1", (("part-seg", "cifar10"),)))
    with pytest.raises(PartbenchError, match=r"\(part-seg, cifar10\): the task reads part-masks"):
        suite(reg, "bad")


# --------------------------------------------------------------------------- the study's claims


def test_study_claims_are_decided_on_paired_differences(tmp_path):
    """Every encoder is scored on the same items; a claim is reproduced when each difference
    it needs is clear of 0, contradicted when one is clear of 0 the other way."""
    s = Store(f"sqlite:///{tmp_path / 'claims.db'}")
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 4

    def correct(p: float) -> dict[str, np.ndarray]:
        return {"correct": (rng.random(400) < p).astype(float), "label": labels}

    scores = {  # (part, object) accuracies: supervised leads on objects, loses on parts
        "mini-supervised": (0.40, 0.90),
        "mini-mocov3": (0.60, 0.50),
        "mini-dino": (0.62, 0.55),
        "mini-mae": (0.58, 0.45),
        "mini-ibot": (0.85, 0.60),
    }
    for enc, (part, obj) in scores.items():
        add(s, enc, "part-linear", correct(part))
        add(s, enc, "object-linear", correct(obj))
    ap_labels = np.arange(200) % 5
    projection = {}
    for enc in ("mini-mocov3", "mini-dino"):
        ids = {}
        for feature, mean in (("projection", 0.3), ("cls", 0.6)):
            ap = np.clip(rng.normal(mean, 0.05, 200), 0, 1)
            ids[feature] = add(
                s, enc, "part-retrieval", {"ap": ap, "label": ap_labels}, default=feature == "cls"
            )
        projection[enc] = ids
    claims = check_claims(s.runs(status="done"), s, projection)
    assert [c.verdict for c in claims] == ["reproduced"] * 4
    assert "mini-supervised − mini-mocov3" in claims[0].evidence
    # The projection better than the class token: claim 4 is contradicted.
    flipped = {
        "mini-mocov3": {
            "projection": projection["mini-mocov3"]["cls"],
            "cls": projection["mini-mocov3"]["projection"],
        }
    }
    assert check_claims(s.runs(status="done"), s, flipped)[3].verdict == "contradicted"
    # An encoder that did not learn is no evidence: claims 1 and 3 need every encoder, so they
    # are no longer reproduced; claim 2 keeps 2 of 3 (more than half) without mini-dino, and
    # claim 4 has 1 of 2 (not more than half).
    aside = check_claims(s.runs(status="done"), s, projection, unlearned=["mini-dino"])
    assert [c.verdict for c in aside] == ["not decided", "reproduced", "not decided", "not decided"]
    for claim in aside:
        assert claim.evidence.endswith("(set aside, not above the floor: mini-dino)")
