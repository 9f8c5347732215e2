"""The study in miniature: every shipped mini encoder on every SynParts task, and the study's
four claims checked against what came out.

The claims (paper-protocol.md) are tested as plain comparisons of the stored scores; each is
reported with its numbers and intervals, reproduced or not, never assumed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from partbench import leaderboard as lb
from partbench.plugins import Registry
from partbench.runner import Outcome, RunOptions, run
from partbench.store import MetricValue, Store

SUPERVISED = "mini-supervised"
CONTRASTIVE = ("mini-mocov3", "mini-dino")
MASKED = ("mini-mae",)
BOTH = ("mini-ibot",)
WITH_PROJECTION = ("mini-mocov3", "mini-dino", "mini-ibot")
MINI_ENCODERS = (SUPERVISED, *CONTRASTIVE, *MASKED, *BOTH, "mini-random")


@dataclass
class Claim:
    statement: str
    reproduced: bool
    evidence: str


@dataclass
class StudyReport:
    board: lb.Board
    claims: list[Claim]
    outcomes: list[Outcome]


def _fmt(m: MetricValue | None) -> str:
    if m is None:
        return "–"
    return f"{m.value:.1f} [{m.ci_low:.1f}, {m.ci_high:.1f}]" if m.ci_low is not None else f"{m.value:.1f}"


def check_claims(board: lb.Board, projection: dict[str, dict[str, MetricValue]]) -> list[Claim]:
    rows = {r.encoder: r for r in board.rows}

    def score(enc: str, level: str) -> float:
        value = getattr(rows[enc], f"{level}_score")
        return float("-inf") if value is None else value

    def show(encs: Sequence[str], level: str) -> str:
        def one(e: str) -> str:
            s = rows[e].score(level)
            if s is None:
                return f"{e} –"
            return f"{e} {s.value:.1f}" + (f" [{s.low:.1f}, {s.high:.1f}]" if s.low is not None else "")

        return ", ".join(one(e) for e in encs)

    ssl = (*CONTRASTIVE, *MASKED, *BOTH)
    beaten = [e for e in (*CONTRASTIVE, *MASKED) if score(e, "part") > score(SUPERVISED, "part")]
    claims = [
        Claim(
            "1. The supervised encoder beats every self-supervised one at the object level.",
            all(score(SUPERVISED, "object") > score(e, "object") for e in ssl),
            f"object scores: {show((SUPERVISED, *ssl), 'object')}",
        ),
        Claim(
            "2. Most contrastive and MIM encoders beat the supervised one at the part level.",
            len(beaten) * 2 > len(CONTRASTIVE) + len(MASKED),
            f"part scores: {show((SUPERVISED, *CONTRASTIVE, *MASKED), 'part')}; "
            f"above supervised: {', '.join(beaten) or 'none'}",
        ),
        Claim(
            "3. The encoder combining contrastive learning and MIM does best on parts.",
            all(score(BOTH[0], "part") >= score(e, "part") for e in (*CONTRASTIVE, *MASKED)),
            f"part scores: {show((*BOTH, *CONTRASTIVE, *MASKED), 'part')}",
        ),
    ]
    worse = [e for e, m in projection.items() if m["projection"].value < m["cls"].value]
    claims.append(
        Claim(
            "4. For contrastive encoders the projection output is worse for parts than the "
            "encoder's class token.",
            len(worse) * 2 > len(projection),
            "part-retrieval mAP, projection vs cls: "
            + "; ".join(f"{e} {_fmt(m['projection'])} vs {_fmt(m['cls'])}" for e, m in projection.items()),
        )
    )
    return claims


def run_mini_study(
    registry: Registry, store: Store, opts: RunOptions, progress: Any = None, say: Any = print
) -> StudyReport:
    outcomes = run(registry, store, MINI_ENCODERS, ["all"], opts, progress=progress, say=say)
    projection: dict[str, dict[str, MetricValue]] = {}
    for feature in ("cls", "projection"):
        variant = dataclasses.replace(opts, options=(*opts.options, f"part-retrieval.feature={feature}"))
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
            if o.value is not None:
                projection.setdefault(o.encoder, {})[feature] = o.value
    boards = lb.build(
        [r for r in store.runs(status="done") if r.encoder in MINI_ENCODERS], dataset="synparts"
    )
    board = boards[0]
    return StudyReport(board, check_claims(board, projection), outcomes)


def to_markdown(report: StudyReport, command: str) -> str:
    lines = [
        "# The study in miniature",
        "",
        "Six mini ViTs (64 px, patch 8, width 128, 6 blocks) pretrained on SynParts with the",
        "study's families of methods, evaluated on every SynParts task. Regenerate with",
        "",
        f"    {command}",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by partbench's `study` command.",
        "",
        "## The study's claims, checked",
        "",
        "A claim counts as reproduced when the point estimates order as the study says; the",
        "intervals beside them show whether that order is more than noise.",
        "",
        "| claim | reproduced | evidence (score [95% interval]) |",
        "|---|---|---|",
    ]
    for c in report.claims:
        lines.append(f"| {c.statement} | {'yes' if c.reproduced else 'no'} | {c.evidence} |")
    lines += ["", "## Leaderboard", "", lb.to_markdown([report.board]).replace("### ", "#### ")]
    return "\n".join(lines)


def write(report: StudyReport, out_dir: Path, command: str) -> list[Path]:
    from partbench.files import write_atomic

    files = {
        "mini.md": to_markdown(report, command),
        "mini.json": lb.to_json([report.board]),
        "mini.svg": lb.to_svg([report.board]),
    }
    for name, text in files.items():
        write_atomic(out_dir / name, text)
    return [out_dir / n for n in files]
