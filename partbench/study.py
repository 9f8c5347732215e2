"""The study in miniature: every shipped mini encoder on every SynParts task, and the study's
four claims checked against what came out.

Each claim (paper-protocol.md) is decided on paired evidence: the bootstrap interval of the
difference between two encoders over the items both were scored on. A claim is reproduced
when every difference it needs lies clear of 0 in its direction, contradicted when one lies
clear of 0 the other way, and otherwise not decided at this size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from partbench.encoders.mini import MINI
from partbench.plugins import Registry
from partbench.ranking.boards import build
from partbench.ranking.comparisons import compare
from partbench.ranking.model import Board
from partbench.render.formatting import difference_text
from partbench.render.publish import write_all
from partbench.runner import Outcome, RunOptions, RunRequest, run
from partbench.store import Store
from partbench.suites import BUILTIN_TASKS, STUDY_TASKS

SUPERVISED = "mini-supervised"
CONTRASTIVE = ("mini-mocov3", "mini-dino")
MASKED = ("mini-mae",)
BOTH = ("mini-ibot",)
WITH_PROJECTION = ("mini-mocov3", "mini-dino", "mini-ibot")
PROJECTION_FEATURES = ("cls", "projection")  # part retrieval on each, for claim 4
REFERENCE = "mini-cnn"  # a CNN trained like mini-supervised: what "learned" looks like here
FLOOR = "mini-random"
MINI_ENCODERS = (SUPERVISED, *CONTRASTIVE, *MASKED, *BOTH, REFERENCE, FLOOR)
DATASET = "synparts"
# The level each method is meant to serve, where it must beat the floor (the same level its
# weights were gated on before shipping).
SERVES = {name: mini.serves for name, mini in MINI.items()}

REPRODUCED, CONTRADICTED, UNDECIDED = "reproduced", "contradicted", "not decided"


@dataclass
class Claim:
    statement: str
    verdict: str  # reproduced, contradicted or not decided
    evidence: str

    @property
    def reproduced(self) -> bool:
        return self.verdict == REPRODUCED


@dataclass
class Difference:
    """a minus b, with the paired 95% interval of the difference."""

    a: str
    b: str
    diff: float
    low: float | None
    high: float | None
    about: tuple[str, ...] = ()  # the encoders compared, where a and b name more than that

    @property
    def encoders(self) -> tuple[str, ...]:
        return self.about or (self.a, self.b)

    @property
    def sign(self) -> int:
        """+1 or -1 when the interval lies clear of 0, else 0."""
        if self.low is not None and self.low > 0:
            return 1
        if self.high is not None and self.high < 0:
            return -1
        return 0

    def text(self) -> str:
        return f"{self.a} − {self.b} {difference_text(self.diff, self.low, self.high)}"


@dataclass
class StudyReport:
    board: Board
    claims: list[Claim]
    outcomes: list[Outcome]
    floor: list[Difference] = dataclasses.field(default_factory=list)  # encoder - floor, its level
    at_chance: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # encoder -> tasks
    weights: dict[str, str] = dataclasses.field(default_factory=dict)  # encoder -> weights id


def above_floor(runs: Sequence[Any], store: Store) -> list[Difference]:
    """Each trained mini minus the untrained one, paired, at the level its method serves."""
    return [level_difference(runs, store, e, FLOOR, level) for e, level in SERVES.items()]


def tasks_at_chance(board: Board) -> dict[str, list[str]]:
    """Trained encoders' tasks whose 95% interval reaches down to the task's chance level."""
    return {
        row.encoder: [key for key in row.tasks if row.task_at_chance(key)]
        for row in board.rows
        if row.encoder != FLOOR
    }


def level_difference(runs: Sequence[Any], store: Store, a: str, b: str, level: str) -> Difference:
    """a minus b at ``level``, paired, over the study's own tasks: the claims are the study's,
    and the dense tasks run beside them would change what a level's score means."""
    studied = [r for r in runs if r.task in STUDY_TASKS]
    at_level = [c for c in compare(studied, a, b, dataset=DATASET, items=store) if c.level == level]
    # A level with several tasks has its own comparison; with one task, that task's is it.
    chosen = [c for c in at_level if c.metric == "score"] or (at_level if len(at_level) == 1 else [])
    if not chosen:
        raise ValueError(f"no {level}-level comparison of {a} and {b}")
    c = chosen[0]
    return Difference(a, b, c.diff, c.low, c.high)


def _decide(diffs: Sequence[Difference], need: str, unlearned: Collection[str] = ()) -> str:
    """``need``: "all" (every difference positive) or "most" (more than half positive). A
    difference with an encoder in ``unlearned`` is no evidence either way: beating, or losing
    to, a network that learned nothing says nothing about its method."""
    signs = [0 if set(d.encoders) & set(unlearned) else d.sign for d in diffs]
    ups = sum(s > 0 for s in signs)
    downs = sum(s < 0 for s in signs)
    if need == "all":
        return REPRODUCED if ups == len(diffs) else CONTRADICTED if downs else UNDECIDED
    half = len(diffs) / 2
    return REPRODUCED if ups > half else CONTRADICTED if downs >= half else UNDECIDED


def check_claims(
    runs: Sequence[Any],
    store: Store,
    projection: dict[str, dict[str, int]],
    unlearned: Collection[str] = (),
) -> list[Claim]:
    """The four claims from paired differences; ``projection`` maps an encoder to the run ids
    of its part retrieval with the projection output and with the class token. Differences
    with an encoder in ``unlearned`` (not above the floor at the level it serves) are listed
    but decide nothing."""
    from partbench.metrics.resampling import paired_bootstrap

    ssl = (*CONTRASTIVE, *MASKED, *BOTH)
    one = [level_difference(runs, store, SUPERVISED, e, "object") for e in ssl]
    two = [level_difference(runs, store, e, SUPERVISED, "part") for e in (*CONTRASTIVE, *MASKED)]
    three = [level_difference(runs, store, BOTH[0], e, "part") for e in (*CONTRASTIVE, *MASKED)]
    four = []
    for enc, ids in projection.items():
        if "projection" in ids and "cls" in ids:
            diff, low, high = paired_bootstrap("mAP", store.items(ids["projection"]), store.items(ids["cls"]))
            four.append(Difference(f"{enc} projection", "cls", diff, low, high, about=(enc,)))

    def listing(diffs: Sequence[Difference]) -> str:
        text = "; ".join(d.text() for d in diffs) or "no runs to compare"
        aside = sorted({e for d in diffs for e in d.encoders if e in unlearned})
        if aside:
            text += f" (set aside, not above the floor: {', '.join(aside)})"
        return text

    def decide(diffs: Sequence[Difference], need: str) -> str:
        return _decide(diffs, need, unlearned)

    return [
        Claim(
            "1. The supervised encoder beats every self-supervised one at the object level.",
            decide(one, "all"),
            "object score differences: " + listing(one),
        ),
        Claim(
            "2. Most contrastive and MIM encoders beat the supervised one at the part level.",
            decide(two, "most"),
            "part score differences: " + listing(two),
        ),
        Claim(
            "3. The encoder combining contrastive learning and MIM does best on parts.",
            decide(three, "all"),
            "part score differences: " + listing(three),
        ),
        Claim(
            "4. For contrastive encoders the projection output is worse for parts than the "
            "encoder's class token.",
            decide(
                [dataclasses.replace(d, diff=-d.diff, low=_neg(d.high), high=_neg(d.low)) for d in four],
                "most",
            )
            if four
            else UNDECIDED,
            "part-retrieval mAP differences: " + listing(four),
        ),
    ]


def _neg(v: float | None) -> float | None:
    return None if v is None else -v


def default_lanes(device: str) -> int:
    """One lane per core when the encoders run on the CPU, one on a GPU. The mini ViT is too
    small for one process to keep two cores busy: a fresh study took 648 s in one two-thread
    process and 480-541 s in two one-thread lanes (2-core CPU), and one-thread lanes give the
    same numbers whatever the core count."""
    import torch

    from partbench.extraction import available_cores

    if device != "cpu" and torch.cuda.is_available():
        return 1
    return max(1, min(available_cores(), len(MINI_ENCODERS)))


def _lane_request(
    encoders: Sequence[str], tasks: str | Sequence[str], opts: RunOptions, *options: str
) -> dict[str, Any]:
    """One lane run: ``opts`` on one thread's worth of work (no decoding processes), with
    ``options`` added to its task options."""
    lane_opts = dataclasses.replace(opts, workers=0, options=(*opts.options, *options))
    names = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    return RunRequest(tuple(encoders), names, lane_opts).to_json()


def run_lanes(
    encoders: Sequence[str],
    lanes: int,
    opts: RunOptions,
    store: Store,
    progress: Any = None,
    tasks_each: int = 1,
    then: Sequence[tuple[Sequence[str], str, str]] = (),
) -> list[tuple[Path, int]]:
    """The runner on the miniature's tasks (suites.BUILTIN_TASKS) for ``encoders`` dealt over
    ``lanes`` processes of one thread each (partbench.lane, started with typed RunRequests),
    sharing the store and the feature cache. ``then`` holds further runs, each (encoders,
    tasks, one task option), that the lane dealt the fewest encoders makes when its own are
    done, in the same process (partbench.lane): put the encoders they read in that lane and
    their features are cached by then. Each lane's output goes to
    PARTBENCH_HOME/study/lane-N.log. Returns each lane's log and exit status (its first
    failing run's)."""
    from partbench import paths

    folder = paths.home() / "study"
    folder.mkdir(parents=True, exist_ok=True)
    # The store's URL goes by the environment: on a command line its password would show in ps.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PARTBENCH_DB": store.url}
    before = max((r.id for r in store.runs()), default=0)
    groups = [g for g in (encoders[i::lanes] for i in range(lanes)) if g]
    commands = [[_lane_request(group, BUILTIN_TASKS, opts)] for group in groups]
    lightest = min(range(len(groups)), key=lambda i: (len(groups[i]), -i))
    commands[lightest] += [_lane_request(names, tasks, opts, option) for names, tasks, option in then]
    started = []
    for i, lane in enumerate(commands):
        log_path = folder / f"lane-{i + 1}.log"
        log = log_path.open("w")
        argv = [sys.executable, "-m", "partbench.lane", json.dumps(lane)]
        started.append((log_path, log, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)))
    total = len(encoders) * tasks_each + sum(len(names) for names, _, _ in then)
    task_id = progress.add_task(f"{len(started)} lanes", total=total) if progress else None
    try:
        while any(proc.poll() is None for _, _, proc in started):
            if progress:
                finished = [r for r in store.runs() if r.id > before and r.status in ("done", "failed")]
                progress.update(task_id, completed=min(total, len(finished)))
            time.sleep(1)
    finally:
        for _, log, proc in started:
            if proc.poll() is None:  # interrupted: no lane outlives the study
                proc.terminate()
                proc.wait()
            log.close()
        if progress:
            progress.remove_task(task_id)
    return [(path, proc.returncode) for path, _, proc in started]


def run_mini_study(
    registry: Registry,
    store: Store,
    opts: RunOptions,
    progress: Any = None,
    say: Any = print,
    lanes: int = 1,
) -> StudyReport:
    if lanes > 1:
        from partbench.runner.execute import prepare_data
        from partbench.runner.plan import select_tasks

        spec = registry.dataset(opts.dataset)
        each = len(select_tasks(registry, list(BUILTIN_TASKS), spec))
        # Generated data is made once, here, for every lane (the lanes load the dataset with
        # its defaults); a limited run reads a few samples, which each lane makes itself.
        if spec.builtin_data and opts.limit is None and not opts.dataset_options:
            prepare_data(spec.load(None), spec.name, lanes, progress, say)
        # Dealt in turn, the last encoder lands in a lane with one more than some others: the
        # CNN goes there, as it encodes and scores in about half a ViT's time (64 s against
        # 120 s). With two lanes the encoders with a projection head share the other lane,
        # which then scores their projection and class-token retrievals from its own cache
        # while the first lane does the CNN (they ran after both lanes before: 16 s).
        plain = [e for e in MINI_ENCODERS if e not in (*WITH_PROJECTION, REFERENCE)]
        order = [e for pair in itertools.zip_longest(plain, WITH_PROJECTION) for e in pair if e]
        order.append(REFERENCE)
        then = [(WITH_PROJECTION, "part-retrieval", _feature_option(f)) for f in PROJECTION_FEATURES]
        for path, status in run_lanes(order, lanes, opts, store, progress, each, then):
            if status:
                say(f"a study lane exited with status {status}; its output is in {path}")
        # What the lanes stored is found and skipped; what one of them failed is run here.
        opts = dataclasses.replace(opts, force=False)
    outcomes = run(registry, store, MINI_ENCODERS, list(BUILTIN_TASKS), opts, progress=progress, say=say)
    projection: dict[str, dict[str, int]] = {}
    for feature in PROJECTION_FEATURES:
        variant = _with_feature(opts, feature)
        for o in run(
            registry,
            store,
            WITH_PROJECTION,
            ["part-retrieval"],
            variant,
            progress=progress,
            say=say,
        ):
            outcomes.append(o)
            if o.run_id is not None and o.status in ("done", "skipped"):
                projection.setdefault(o.encoder, {})[feature] = o.run_id
    runs = [r for r in store.runs(status="done") if r.encoder in MINI_ENCODERS]
    board = build(runs, dataset=DATASET, registry=registry, items=store)[0]
    floor = above_floor(runs, store)
    unlearned = [d.a for d in floor if d.sign <= 0]
    return StudyReport(
        board,
        check_claims(runs, store, projection, unlearned),
        outcomes,
        floor=floor,
        at_chance=tasks_at_chance(board),
        weights={e: w for e in MINI_ENCODERS if (w := _weights_of(runs, e)) is not None},
    )


def _with_feature(opts: RunOptions, feature: str) -> RunOptions:
    """``opts`` for claim 4's part retrieval on ``feature`` (cls or projection)."""
    return dataclasses.replace(opts, options=(*opts.options, _feature_option(feature)))


def _feature_option(feature: str) -> str:
    return f"part-retrieval.feature={feature}"


def forecast_mini_study(registry: Registry, store: Any, opts: RunOptions) -> list[dict[str, Any]]:
    """What ``partbench study mini`` would run, as ``partbench run --dry-run`` tells it
    (partbench.runner.forecast): every mini on every task, then claim 4's retrievals. Those
    read the part crops that the runs before them encode, so their passes are shown as such,
    with no bytes or time of their own."""
    from partbench.runner.forecast import forecast

    loaded: dict = {}  # one SynParts for every forecast: its crops are counted once
    runs = forecast(registry, store, MINI_ENCODERS, list(BUILTIN_TASKS), opts, loaded)
    found = [runs]
    for feature in PROJECTION_FEATURES:
        retrievals = forecast(
            registry, store, WITH_PROJECTION, ["part-retrieval"], _with_feature(opts, feature), loaded
        )
        found.append(_read_from(retrievals, runs))
    return found


def _read_from(later: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """``later``'s forecast with each pass that ``earlier`` encodes (the same cache entry, its
    outputs among those encoded there) marked as encoded by it."""
    from partbench.runner.forecast import add_totals

    written = {
        (e["encoder"], p["entry"]): set(p["outputs"])
        for e in earlier["encoders"]
        for p in e["passes"]
        if p["action"] != "cached"
    }
    for e in later["encoders"]:
        for i, p in enumerate(e["passes"]):
            held = written.get((e["encoder"], p["entry"]), set())
            if p["action"] != "cached" and p["entry"] is not None and set(p["outputs"]) <= held:
                e["passes"][i] = {
                    **{k: p[k] for k in ("split", "inputs", "transform", "entry")},
                    "action": "encoded by the runs above",
                    "outputs": p["outputs"],
                    "bytes": 0,
                }
        add_totals(e)
    return {**later, "data_bytes": 0}  # drawn for the runs above


def _weights_of(runs: Sequence[Any], encoder: str) -> str | None:
    found = [r.weights_id for r in runs if r.encoder == encoder and r.dataset == DATASET]
    return found[-1] if found else None


def to_markdown(report: StudyReport, command: str) -> str:
    from partbench.render.markdown import md
    from partbench.render.markdown import render as boards_markdown

    lines = [
        "# The study in miniature",
        "",
        "Six mini ViTs (64 px, patch 8, width 128, 6 blocks), five pretrained on SynParts with the",
        "study's families of methods and one untrained (the floor), and a reference CNN trained",
        "like the supervised ViT, evaluated on every SynParts task. Regenerate with",
        "",
        f"    {command}",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by partbench's `study` command.",
        "",
        "## The study's claims, checked",
        "",
        "Each claim is decided on paired differences (a − b, in points, with the 95% interval of a",
        "paired bootstrap over the items both encoders were scored on): reproduced when every",
        "difference the claim needs is clear of 0 in its direction, contradicted when one is clear",
        "of 0 the other way, otherwise not decided at this size. A difference with an encoder that",
        "is not above the floor at the level its method serves (next section) is listed and set",
        "aside: it learned nothing there, so it is evidence about its training, not its method.",
        "",
        "| claim | verdict | evidence |",
        "|---|---|---|",
    ]
    for c in report.claims:
        lines.append(f"| {md(c.statement)} | {c.verdict} | {md(c.evidence)} |")
    lines += [
        "",
        "## Above the floor",
        "",
        f"Each trained encoder minus {FLOOR} (the mini ViT, untrained), paired, at the level its",
        "method is meant to serve; and the tasks where its 95% interval reaches chance.",
        "",
        "| encoder | level | difference from the floor | clear of 0 | tasks at chance |",
        "|---|---|---|---|---|",
    ]
    for d in report.floor:
        chance = ", ".join(report.at_chance.get(d.a, [])) or "none"
        clear = "yes" if d.sign > 0 else "no, below" if d.sign < 0 else "no"
        difference = difference_text(d.diff, d.low, d.high)
        lines.append(f"| {d.a} | {SERVES[d.a]} | {difference} | {clear} | {md(chance)} |")
    lines += ["", "## Leaderboard", "", boards_markdown([report.board]).replace("### ", "#### ")]
    return "\n".join(lines)


def claims_record(report: StudyReport) -> dict[str, Any]:
    """The verdicts as data: the claims, each encoder against the floor, tasks at chance and
    the weights every encoder was run with (so a reader can tell which files were judged)."""

    def diff(d: Difference) -> dict[str, Any]:
        return {"a": d.a, "b": d.b, "difference": d.diff, "low": d.low, "high": d.high, "clear": d.sign}

    return {
        "claims": [dataclasses.asdict(c) for c in report.claims],
        "above_floor": [{**diff(d), "level": SERVES[d.a]} for d in report.floor],
        "tasks_at_chance": report.at_chance,
        "weights": report.weights,
    }


def write(report: StudyReport, out_dir: Path, command: str, screenshot: bool | None = None) -> list[Path]:
    """mini.md (the claims and the board), mini.json, mini.svg, mini.html and its screenshot,
    mini.png. ``screenshot=None`` takes the picture where Chromium is found; where it is not,
    an older mini.png is removed rather than left beside results it does not show."""
    if screenshot is None:
        from partbench.render.browser import find_chromium

        screenshot = find_chromium() is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    if not screenshot:
        (out_dir / "mini.png").unlink(missing_ok=True)
    claims = out_dir / "mini-claims.json"
    claims.write_text(json.dumps(claims_record(report), indent=1) + "\n")
    files = write_all(
        [report.board],
        out_dir,
        command,
        stem="mini",
        title="partbench: the study in miniature",
        markdown=to_markdown(report, command),
        screenshot=screenshot,
    )
    return [claims, *files]
