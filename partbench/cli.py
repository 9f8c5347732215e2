"""The command line. Each command parses, calls one function, prints. Imports of torch,
timm and SQLAlchemy happen inside commands, so ``partbench --help`` answers at once."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from partbench import __version__
from partbench.errors import PartbenchError


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A mistake the user can fix is one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PartbenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def _registry():
    from partbench.plugins import registry

    reg = registry()
    for problem in reg.problems:
        click.echo(f"Warning: {problem}", err=True)
    return reg


def _store(db: str | None):
    from partbench.paths import database_url
    from partbench.store import Store

    return Store(database_url(db))


db_option = click.option(
    "--db", metavar="URL", help="SQLAlchemy URL of the results store [env: PARTBENCH_DB]"
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="partbench")
def cli() -> None:
    """How part-aware is a pretrained vision encoder, next to how well it knows whole objects?

    \b
    partbench run --encoder random-vit --task all    evaluate on the built-in SynParts data
    partbench leaderboard                            rank what the store holds
    """


@cli.command()
@click.option("--encoder", "-e", "encoders", multiple=True, required=True, help="encoder name (repeatable)")
@click.option(
    "--task",
    "-t",
    "tasks",
    multiple=True,
    required=True,
    help="task name, or part / object / all: every task of that level the dataset supports",
)
@click.option("--dataset", "-d", default="synparts", show_default=True)
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    help="the dataset's folder [default: PARTBENCH_DATA/<name>]",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="weights file for the encoder",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--batch-size", default=64, show_default=True, type=int, help="images per encoder forward")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", type=int, help="read at most N images per split, for quick looks")
@click.option("--repeats", default=1, show_default=True, type=int, help="train each probe with N seeds")
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="[TASK.]KEY=VALUE",
    help="task option (see `partbench list tasks`)",
)
@click.option("--force", is_flag=True, help="re-run configurations that are already stored")
@db_option
@user_errors
def run(
    encoders,
    tasks,
    dataset,
    data_root,
    weights,
    device,
    batch_size,
    precision,
    seed,
    limit,
    repeats,
    options,
    force,
    db,
) -> None:
    """Evaluate encoders on tasks and store every result with its provenance."""
    from partbench.runner import RunOptions
    from partbench.runner import run as run_all

    if weights is not None and len(encoders) > 1:
        raise PartbenchError("--weights belongs to one encoder; give a single --encoder with it")
    reg = _registry()
    store = _store(db)
    opts = RunOptions(
        dataset=dataset,
        data_root=data_root,
        weights=weights,
        device=device,
        batch_size=batch_size,
        precision=precision,
        seed=seed,
        limit=limit,
        repeats=repeats,
        force=force,
        options=options,
    )
    err = _console(stderr=True)
    with _progress(err) as progress:
        outcomes = run_all(reg, store, encoders, tasks, opts, progress=progress, say=_problem(err))
    _print_outcomes(outcomes)
    if any(o.status == "failed" for o in outcomes):
        sys.exit(1)


def _problem(console) -> Callable[[str], None]:
    """Print a failure in full (the table cuts it), without reading brackets in it as markup."""
    return lambda message: console.print(message, style="red", markup=False, highlight=False)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _print_outcomes(outcomes) -> None:
    from rich.table import Table

    table = Table(title="partbench run", title_justify="left")
    for col in ("encoder", "task", "metric", "score [95% CI]", "images/s", "run", "status"):
        table.add_column(col, justify="right" if col in ("score [95% CI]", "images/s", "run") else "left")
    for o in outcomes:
        score = "–"
        if o.value is not None:
            score = f"{o.value.value:.2f}"
            if o.value.ci_low is not None:
                score += f" [{o.value.ci_low:.2f}, {o.value.ci_high:.2f}]"
        ips = o.timing.get("images_per_second")
        status = {
            "done": "[green]done[/]",
            "skipped": "stored (--force reruns)",
            "failed": "[red]failed[/] (reason above)",
        }[o.status]
        table.add_row(
            o.encoder,
            o.task,
            o.metric,
            score,
            f"{ips:.0f}" if ips else "–",
            str(o.run_id or "–"),
            status,
        )
    _console().print(table)


@cli.command("list")
@click.argument("what", type=click.Choice(["encoders", "tasks", "datasets"]))
@format_option
@user_errors
def list_(what: str, fmt: str) -> None:
    """List the encoders, tasks or datasets that plugins provide."""
    from partbench.listing import describe, render_table

    items = describe(_registry(), what)
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
    else:
        _console().print(render_table(what, items))


@cli.command()
@click.option("--dataset", "-d", help="only runs on this dataset")
@click.option("--status", type=click.Choice(["running", "done", "failed"]))
@format_option
@db_option
@user_errors
def runs(dataset: str | None, status: str | None, fmt: str, db: str | None) -> None:
    """Show the stored runs."""
    from partbench.listing import render_runs, run_record

    records = [run_record(r) for r in _store(db).runs(status=status, dataset=dataset)]
    if fmt == "json":
        click.echo(json.dumps(records, indent=2, default=str))
    else:
        _console().print(render_runs(records))


@cli.command()
@click.option("--level", type=click.Choice(["object", "part", "all"]), default="all", show_default=True)
@click.option("--dataset", "-d", help="only this dataset [default: every dataset, one table each]")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "markdown", "csv", "json", "svg"]),
    help="svg: object score against part score [default: from --output's extension, else table]",
)
@click.option("--output", "-O", type=click.Path(path_type=Path, dir_okay=False), help="write to FILE")
@db_option
@user_errors
def leaderboard(
    level: str, dataset: str | None, fmt: str | None, output: Path | None, db: str | None
) -> None:
    """Rank encoders within each level from the stored runs."""
    from partbench import leaderboard as lb

    boards = lb.build(_store(db).runs(status="done"), level=level, dataset=dataset)
    if not boards:
        raise PartbenchError(
            "no finished runs"
            + (f" on dataset '{dataset}'" if dataset else "")
            + " in the store; try: partbench run --encoder random-vit --task all"
        )
    fmt = fmt or lb.format_for(output)
    if fmt == "table" and output is None:
        _console().print(lb.to_rich(boards))
    elif output is None:
        click.echo(lb.render(boards, fmt), nl=False)
    else:
        from partbench.files import write_atomic

        write_atomic(output, lb.render(boards, fmt))
        click.echo(f"Wrote {output}", err=True)


@cli.group()
def data() -> None:
    """Get the real datasets that have a stable public archive."""


@data.command("fetch")
@click.argument("name")
@click.option(
    "--dest",
    type=click.Path(path_type=Path, file_okay=False),
    help="the dataset's folder [default: PARTBENCH_DATA/<name>]",
)
@click.option("--url", help="a mirror of the archive (the official sha256 still applies)")
@click.option("--sha256", help="the archive's sha256, for a --url that serves another file")
@user_errors
def data_fetch(name: str, dest: Path | None, url: str | None, sha256: str | None) -> None:
    """Download NAME's archive, check its sha256 and unpack it (cub200)."""
    from partbench.datasets.fetch import fetch

    folder = fetch(name, dest=dest, url=url, sha256=sha256, progress=True)
    click.echo(f"{name}: data in {folder}")


@cli.command()
@click.option(
    "--method",
    "-m",
    required=True,
    type=click.Choice(["supervised", "mocov3", "dino", "mae", "ibot"]),
)
@click.option("--steps", required=True, type=int, help="optimiser steps")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="folder for mini-METHOD.safetensors and its loss log [default: PARTBENCH_HOME/pretrain]",
)
@click.option("--batch-size", type=int, help="images per step [default: the recipe's]")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, help="torch CPU threads [default: torch's]")
@user_errors
def pretrain(
    method: str,
    steps: int,
    seed: int,
    out_dir: Path | None,
    batch_size: int | None,
    device: str,
    threads: int | None,
) -> None:
    """Pretrain the mini ViT on SynParts with METHOD (to ship it: python -m partbench.pretrain.ship)."""
    from partbench.pretrain import pretrain as run_pretrain

    result = run_pretrain(
        method,
        steps=steps,
        seed=seed,
        out_dir=out_dir,
        device=device,
        batch_size=batch_size,
        threads=threads,
    )
    click.echo(
        f"{result.weights}: {steps} steps in {result.seconds:.0f} s, "
        f"loss {result.losses[0]:.4f} -> {result.final_loss:.4f} (log: {result.log})"
    )


@cli.command()
@click.argument("which", type=click.Choice(["mini"]))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="also write mini.md, mini.json and mini.svg there (the repository's leaderboard/)",
)
@click.option("--force", is_flag=True, help="re-run configurations that are already stored")
@db_option
@user_errors
def study(which: str, device: str, seed: int, output_dir: Path | None, force: bool, db: str | None) -> None:
    """Run the study in miniature: the shipped mini encoders on every SynParts task."""
    from partbench import leaderboard as lb
    from partbench import study as mini
    from partbench.runner import RunOptions

    err = _console(stderr=True)
    with _progress(err) as progress:
        report = mini.run_mini_study(
            _registry(),
            _store(db),
            RunOptions(device=device, seed=seed, force=force),
            progress=progress,
            say=_problem(err),
        )
    out = _console()
    out.print(lb.to_rich([report.board]))
    for claim in report.claims:
        mark = "[green]reproduced[/]" if claim.reproduced else "[yellow]not reproduced[/]"
        out.print(f"{mark}  {claim.statement}\n    {claim.evidence}")
    if output_dir is not None:
        command = "partbench study mini --output-dir " + str(output_dir)
        for path in mini.write(report, output_dir, command):
            click.echo(f"Wrote {path}", err=True)
    if any(o.status == "failed" for o in report.outcomes):
        sys.exit(1)


def main() -> None:
    cli()
