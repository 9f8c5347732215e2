"""The command line. Each command parses, calls one function, prints. Imports of torch,
timm and SQLAlchemy happen inside commands, so ``partbench --help`` answers at once."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from partbench import __version__
from partbench.cli_sweep import sweep_options
from partbench.errors import PartbenchError, Terminated
from partbench.render.formats import DEFAULT as DEFAULT_FORMAT
from partbench.render.formats import FORMATS
from partbench.render.formatting import size_text


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A mistake the user can fix is one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except PartbenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("Terminated.", err=True)
            sys.exit(143)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: runs in flight are marked
    # interrupted instead of being left 'running'.
    raise Terminated()


def _registry():
    from partbench.plugins import registry

    reg = registry()
    for problem in reg.problems:
        click.echo(f"Warning: {problem}", err=True)
    return reg


def _store(db: str | None):
    from partbench.paths import database_url
    from partbench.store import Store

    store = Store(database_url(db))
    for problem in store.problems:  # pending results from an earlier command that could not be stored
        click.echo(f"Warning: {problem}", err=True)
    return store


def _read_only_store(db: str | None):
    """The store as a dry run reads it: a SQLite file opened read-only (pending results are
    not applied, no schema is written), no store at all where the file does not exist yet."""
    from sqlalchemy.engine import make_url

    from partbench.paths import database_url
    from partbench.runner.forecast import NoStore
    from partbench.store import Store

    url = database_url(db)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from urllib.parse import quote

        path = Path(parsed.database)
        if not str(parsed.database).startswith("file:"):
            if not path.exists():
                return NoStore()
            url = f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true"
    return Store(url)


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
    help="task name, or part / object / all: every task of that level the dataset supports",
)
@click.option(
    "--suite",
    "-s",
    help="every (task, dataset) pair of this suite whose data is present (see `partbench list suites`)",
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
@click.option(
    "--dataset-option",
    "dataset_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="an option of the dataset's reader (see `partbench list datasets`)",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--batch-size", default=64, show_default=True, type=int, help="images per encoder forward")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 on CUDA, fp32 on a CPU",
)
@click.option(
    "--workers",
    type=int,
    help="processes decoding images [default: all cores with a GPU; on a CPU, none up to 4 cores]",
)
@click.option(
    "--compile", "compile_", is_flag=True, help="torch.compile the encoder (compile time kept apart)"
)
@click.option("--no-cache", is_flag=True, help="keep features only for this command")
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
@click.option(
    "--dry-run",
    is_flag=True,
    help="print the passes, bytes, memory and time the run would take, and what is stored or cached; "
    "run nothing, write nothing",
)
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: the forecast as JSON")
@db_option
@user_errors
def run(
    encoders,
    tasks,
    suite,
    dataset,
    data_root,
    weights,
    dataset_options,
    device,
    batch_size,
    precision,
    workers,
    compile_,
    no_cache,
    seed,
    limit,
    repeats,
    options,
    force,
    dry_run,
    as_json,
    db,
) -> None:
    """Evaluate encoders on tasks and store every result with its provenance."""
    from partbench.runner import RunOptions
    from partbench.runner import run as run_all

    if weights is not None and len(encoders) > 1:
        raise PartbenchError("--weights belongs to one encoder; give a single --encoder with it")
    if bool(tasks) == bool(suite):
        raise PartbenchError("give --task (with --dataset) or --suite, not both and not neither")
    if as_json and not dry_run:
        raise PartbenchError("--json goes with --dry-run")
    reg = _registry()
    store = _read_only_store(db) if dry_run else _store(db)
    work = [(dataset, list(tasks))]
    if suite:
        work = _suite_work(reg, suite, data_root)
    opts = RunOptions(
        dataset=dataset,
        data_root=data_root,
        dataset_options=dataset_options,
        weights=weights,
        device=device,
        batch_size=batch_size,
        precision=precision,
        workers=workers,
        compile=compile_,
        cache=not no_cache,
        seed=seed,
        limit=limit,
        repeats=repeats,
        force=force,
        options=options,
    )
    import dataclasses

    if dry_run:
        from partbench.render.forecast import forecast_text
        from partbench.runner.forecast import forecast

        found = [
            forecast(reg, store, encoders, ds_tasks, dataclasses.replace(opts, dataset=ds))
            for ds, ds_tasks in work
        ]
        if as_json:
            click.echo(json.dumps(found, indent=2))
        else:
            click.echo(forecast_text(found))
        return

    from partbench.distributed import World

    main = World.from_env().main  # under torchrun, rank 0 reports for everyone
    err = _console(stderr=True)
    outcomes = []
    with _progress(err) if main else contextlib.nullcontext() as progress:
        for ds, ds_tasks in work:
            outcomes += run_all(
                reg,
                store,
                encoders,
                ds_tasks,
                dataclasses.replace(opts, dataset=ds),
                progress=progress,
                say=_problem(err) if main else lambda message: None,
            )
    if not main:
        return
    _print_outcomes(outcomes)
    if any(o.status == "failed" for o in outcomes):
        sys.exit(1)


def _suite_work(reg, name: str, data_root: Path | None) -> list[tuple[str, list[str]]]:
    """The suite's pairs grouped by dataset, keeping the datasets whose data is present; the
    others are listed with where to get them."""
    from partbench.suites import missing_data, pairs_by_dataset, suite

    if data_root is not None:
        raise PartbenchError("--data-root names one dataset's folder; with --suite use PARTBENCH_DATA")
    spec = suite(reg, name)
    missing = dict(missing_data(reg, spec))
    for ds, where in missing.items():
        click.echo(f"{name}: no data for {ds}, skipped (get it: {where})", err=True)
    work = [(ds, tasks) for ds, tasks in pairs_by_dataset(spec.pairs).items() if ds not in missing]
    if not work:
        raise PartbenchError(f"suite '{name}': no dataset of it has its data here")
    return work


def _problem(console) -> Callable[[str], None]:
    """Print a failure in full (the table cuts it), without reading brackets in it as markup."""
    return lambda message: console.print(message, style="red", markup=False, highlight=False)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}", markup=False),  # descriptions carry plugin names
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _print_outcomes(outcomes) -> None:
    from partbench.render.terminal import outcomes_table

    console = _console()
    console.print(outcomes_table(outcomes, width=console.width))


@cli.command("list")
@click.argument("what", type=click.Choice(["encoders", "tasks", "datasets", "suites", "plugins"]))
@format_option
@user_errors
def list_(what: str, fmt: str) -> None:
    """List the encoders, tasks, datasets or suites that plugins provide, or the plugins themselves."""
    from partbench.listing import describe, render_table

    if what == "suites":
        from partbench.suites import describe as describe_suites

        items = describe_suites(_registry())
        if fmt == "json":
            click.echo(json.dumps(items, indent=2))
            return
        for item in items:
            pairs = ", ".join(f"{t}@{d}" for t, d in item["pairs"])
            click.echo(f"{item['name']} (version {item['version']}): {item['description']}\n  {pairs}")
        return
    items = describe(_registry(), what)
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
    elif what == "tasks":  # one option per line, columns chosen for the width
        from partbench.render.terminal import tasks_table

        console = _console()
        console.print(tasks_table(items, width=console.width))
    else:
        _console().print(render_table(what, items))


@cli.command()
@click.option("--dataset", "-d", help="only runs on this dataset")
@click.option("--status", type=click.Choice(["running", "done", "failed", "interrupted", "abandoned"]))
@click.option("--id", "run_id", type=int, help="everything about one run, its error and traceback included")
@click.option("--prune", is_flag=True, help="delete abandoned runs (running, but their process is gone)")
@click.option("--wide", is_flag=True, help="every column (all metrics, errors), however wide")
@format_option
@db_option
@user_errors
def runs(
    dataset: str | None,
    status: str | None,
    run_id: int | None,
    prune: bool,
    wide: bool,
    fmt: str,
    db: str | None,
) -> None:
    """Show the stored runs."""
    from partbench.listing import run_record

    store = _store(db)
    if prune:
        click.echo(f"Removed {store.prune()} abandoned run(s).")
        return
    if run_id is not None:
        from partbench.listing import format_detail

        detail = store.detail(run_id)
        click.echo(json.dumps(detail, indent=2, default=str) if fmt == "json" else format_detail(detail))
        return
    found = store.runs(status=status, dataset=dataset)
    records = [{**run_record(r), "status": r.state} for r in found]  # state: 'abandoned' shows
    if fmt == "json":
        click.echo(json.dumps(records, indent=2, default=str))
    else:
        from partbench.render.terminal import runs_table

        console = _console()
        console.print(runs_table(records, width=console.width, wide=wide))


@cli.command()
@click.option("--level", type=click.Choice(["object", "part", "all"]), default="all", show_default=True)
@click.option("--dataset", "-d", help="only this dataset [default: every dataset, one table each]")
@click.option("--suite", "-s", help="rank over exactly this suite's (task, dataset) pairs (e.g. study)")
@click.option("--wide", is_flag=True, help="one column per task beside the level scores")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    help="; ".join(f"{f.name}: {f.about}" for f in FORMATS.values() if f.about)
    + f" [default: from --output's extension, else {DEFAULT_FORMAT}]",
)
@click.option("--output", "-O", type=click.Path(path_type=Path, dir_okay=False), help="write to FILE")
@db_option
@user_errors
def leaderboard(
    level: str,
    dataset: str | None,
    suite: str | None,
    wide: bool,
    fmt: str | None,
    output: Path | None,
    db: str | None,
) -> None:
    """Rank encoders within each level from the stored runs; ties come from paired comparisons."""
    from partbench import leaderboard as commands

    commands.leaderboard(
        _store(db),
        level=level,
        dataset=dataset,
        suite=suite,
        registry=_registry() if suite else None,
        fmt=fmt,
        output=output,
        wide=wide,
        console=_console(),
        out=lambda text: click.echo(text, nl=False),
        note=lambda text: click.echo(text, err=True),
    )


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--task", "-t", help="only this task")
@click.option("--dataset", "-d", help="only this dataset [default: every dataset both ran on]")
@format_option
@db_option
@user_errors
def compare(a: str, b: str, task: str | None, dataset: str | None, fmt: str, db: str | None) -> None:
    """Paired differences A minus B with 95% intervals, task by task and per level."""
    from partbench import leaderboard as commands

    commands.compare(
        _store(db),
        a,
        b,
        task=task,
        dataset=dataset,
        fmt=fmt,
        console=_console(),
        out=lambda text: click.echo(text, nl=False),
    )


@cli.group()
def cache() -> None:
    """The feature cache: what encoder passes wrote, reused by every later task."""


@cache.command("info")
@format_option
@user_errors
def cache_info(fmt: str) -> None:
    """Show each cached entry: encoder, dataset, split, outputs and size."""
    from partbench.cache import FeatureCache, cache_root, size_of
    from partbench.datasets.synparts import kept_renders

    root = cache_root()
    renders = [{"file": str(f), "bytes": f.stat().st_size} for f in kept_renders()]
    cache = FeatureCache(root)
    leftovers = [{"path": str(p), "bytes": size_of(p)} for p in cache.leftovers()]
    rows = []
    for e in cache.entries():
        info = e.info()
        rows.append(
            {
                "key": e.folder.name,
                "encoder": info.get("encoder", "?"),
                "dataset": info.get("dataset", "?"),
                "split": f"{info.get('split', '?')} {info.get('inputs', '')}".strip()
                + (f", cut from {info['cut_from_split']}" if info.get("cut_from_split") else ""),
                "outputs": sorted(
                    k
                    for k in e.recorded()
                    if not k.startswith(("masks:", "labels", "sample_")) and ":" not in k
                ),
                "bytes": e.size_bytes(),
            }
        )
    if fmt == "json":
        shown = {"root": str(root), "entries": rows, "synparts_renders": renders, "leftovers": leftovers}
        click.echo(json.dumps(shown, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"feature cache: {root}"), title_justify="left")
    for col in ("encoder", "dataset", "split", "outputs", "size"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for r in rows:
        table.add_row(
            escape(r["encoder"]),
            escape(r["dataset"]),
            escape(r["split"]),
            escape(", ".join(r["outputs"])),
            size_text(r["bytes"]),
        )
    _console().print(table)
    click.echo(f"{len(rows)} entries, {size_text(sum(r['bytes'] for r in rows))}")
    if renders:
        click.echo(f"SynParts renders: {len(renders)} files, {size_text(sum(r['bytes'] for r in renders))}")
    if leftovers:
        click.echo(
            f"Left by interrupted passes or set aside: {len(leftovers)} files or folders, "
            f"{size_text(sum(r['bytes'] for r in leftovers))} (partbench cache clear frees them)"
        )


@cache.command("verify")
@user_errors
def cache_verify() -> None:
    """Check every block of every entry against its recorded digests (a run checks a sample);
    an entry that fails is set aside, and its features are computed again when next needed."""
    import warnings

    from partbench.cache import CacheWarning, FeatureCache, Problem, cache_root

    good = bad = 0
    for e in FeatureCache(cache_root()).entries():
        try:
            e.check(full=True)
            good += 1
        except Problem as problem:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CacheWarning)
                dest = e.set_aside(problem)
            click.echo(f"{e.folder}: {problem}; set aside as {dest}")
            bad += 1
    click.echo(f"{good} entries verified, {bad} set aside")
    if bad:
        raise SystemExit(1)


@cache.command("clear")
@click.option("--encoder", "-e", help="only this encoder's entries")
@user_errors
def cache_clear(encoder: str | None) -> None:
    """Free the cache's space: every feature entry, what interrupted passes left, the entries
    set aside as damaged, and SynParts' kept renders (or one encoder's features alone)."""
    from partbench.cache import FeatureCache, cache_root

    count, freed = FeatureCache(cache_root()).clear(encoder)
    click.echo(f"Removed {count} entries, {size_text(freed)}")
    if encoder is None:
        from partbench.datasets.synparts import kept_renders

        files = kept_renders()
        size = sum(f.stat().st_size for f in files)
        for f in files:
            f.unlink(missing_ok=True)
        if files:
            click.echo(
                f"Removed {len(files)} SynParts render files, {size_text(size)} (drawn again when needed)"
            )


@cli.group("db")
def db_group() -> None:
    """Move runs between results stores: a laptop's SQLite into a team's PostgreSQL."""


@db_group.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["done", "failed", "interrupted"]),
    help="only runs of this status (repeatable) [default: done, failed, interrupted]",
)
@click.option("--dataset", "-d", help="only runs on this dataset")
@click.option("--encoder", "-e", "encoders", multiple=True, help="only runs of this encoder (repeatable)")
@db_option
@user_errors
def db_export(
    file: Path, statuses: tuple[str, ...], dataset: str | None, encoders: tuple[str, ...], db
) -> None:
    """Write stored runs to FILE (JSON lines; .gz compresses), with all their provenance."""
    from partbench.exchange import EXPORTED_STATUSES, export_runs

    report = export_runs(
        _store(db), file, statuses=statuses or EXPORTED_STATUSES, dataset=dataset, encoders=encoders
    )
    click.echo(report.summary())


@db_group.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@db_option
@user_errors
def db_import(file: Path, db: str | None) -> None:
    """Add the runs of FILE (from `partbench db export`) to the store; a configuration already
    done there is skipped."""
    from partbench.exchange import import_runs

    click.echo(import_runs(_store(db), file, tasks=_registry().tasks).summary())


@cli.command()
@sweep_options
@db_option
@user_errors
def sweep(**kwargs: Any) -> None:
    """Submit one job per encoder (x dataset) through submitit, locally or on Slurm; --status
    shows what is queued, running, done and failed."""
    from partbench.cli_sweep import command

    command(**kwargs, console=_console(), say=lambda message: click.echo(message, err=True))


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
    type=click.Choice(["supervised", "supervised-cnn", "mocov3", "dino", "mae", "ibot"]),
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
@click.option(
    "--lanes",
    type=click.IntRange(min=1),
    help="encoders run in N processes of one thread each [default: one per core on a CPU, 1 on a GPU]",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="print the runs, passes, bytes, memory and time the study would take; run nothing, write nothing",
)
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: the forecast as JSON")
@db_option
@user_errors
def study(
    which: str,
    device: str,
    seed: int,
    output_dir: Path | None,
    force: bool,
    lanes: int | None,
    dry_run: bool,
    as_json: bool,
    db: str | None,
) -> None:
    """Run the study in miniature: the shipped mini encoders on every SynParts task."""
    from partbench import study as mini
    from partbench.render import terminal
    from partbench.runner import RunOptions

    if as_json and not dry_run:
        raise PartbenchError("--json goes with --dry-run")
    if dry_run:
        from partbench.render.forecast import forecast_text

        opts = RunOptions(device=device, seed=seed, force=force)
        found = mini.forecast_mini_study(_registry(), _read_only_store(db), opts)
        click.echo(json.dumps(found, indent=2) if as_json else forecast_text(found))
        return
    err = _console(stderr=True)
    store = _store(db)
    with _progress(err) as progress:
        report = mini.run_mini_study(
            _registry(),
            store,
            RunOptions(device=device, seed=seed, force=force),
            progress=progress,
            say=_problem(err),
            lanes=mini.default_lanes(device) if lanes is None else lanes,
        )
    from partbench.text import rich_text

    out = _console()
    out.print(terminal.leaderboard([report.board]))
    colours = {"reproduced": "green", "contradicted": "red", "not decided": "yellow"}
    for claim in report.claims:
        mark = f"[{colours[claim.verdict]}]{claim.verdict}[/]"
        out.print(f"{mark}  {rich_text(claim.statement)}\n    {rich_text(claim.evidence)}")
    for d in report.floor:
        mark = "[green]above the floor[/]" if d.sign > 0 else "[red]not above the floor[/]"
        chance = ", ".join(report.at_chance.get(d.a, [])) or "none"
        out.print(
            f"{mark}  {rich_text(d.text())} ({mini.SERVES[d.a]} level); tasks at chance: {rich_text(chance)}"
        )
    if output_dir is None:  # a first run's reader would otherwise not know where it went
        click.echo(
            f"The runs are stored in {store.target.label}: `partbench leaderboard` shows them again; "
            "--output-dir DIR also writes this report as mini.md, mini.json, mini.html and mini.svg.",
            err=True,
        )
    else:
        command = "partbench study mini --output-dir " + str(output_dir)
        written = mini.write(report, output_dir, command)
        for path in written:
            click.echo(f"Wrote {path}", err=True)
        if output_dir / "mini.png" not in written:
            err.print(
                "[yellow]Not written:[/] mini.png (no Chromium found: install Debian's chromium, or"
                " set PARTBENCH_CHROMIUM); mini.html is the same page"
            )
    if any(o.status == "failed" for o in report.outcomes):
        sys.exit(1)


def main() -> None:
    cli()
