"""``partbench sweep``'s command line: its options, the submit message and the status table.
The launching and the job records are partbench.sweep's."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from partbench.sweep import (
    DEFAULT_TIME_MIN,
    LAUNCHERS,
    STATES,
    Launcher,
    SweepRequest,
    status,
    submit,
    sweeps_root,
    wait_for,
)


def print_status(sweeps: Sequence[Mapping[str, Any]], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    if not sweeps:
        console.print(f"No sweeps recorded in {sweeps_root()}.", markup=False)
        return
    for sweep in sweeps:
        if sweep.get("damaged"):
            console.print(
                f"sweep {sweep['name']}: its record is damaged and cannot be shown: {sweep['damaged']}",
                markup=False,
                highlight=False,
                style="red",
            )
            continue
        table = Table(
            title=f"sweep {sweep['name']} ({sweep['launcher']}, {sweep['created_at']})", title_justify="left"
        )
        for col in ("job", "encoder", "dataset", "tasks", "state", "runs done/skipped/failed", "note"):
            table.add_column(col)
        colour = {"done": "green", "failed": "red", "running": "yellow", "queued": "cyan"}
        for job in sweep["jobs"]:
            runs = job["runs"]
            table.add_row(
                Text(job["job_id"]),
                Text(job["encoder"]),
                Text(job["dataset"]),
                Text(", ".join(job["tasks"])),
                Text(job["state"], style=colour.get(job["state"], "")),
                f"{runs['done']}/{runs['skipped']}/{runs['failed']}",
                Text(job["error"] or ""),
            )
        console.print(table)
        counts = sweep["counts"]
        line = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s] or s != "unknown")
        not_submitted = len(sweep["skipped"])
        extra = (
            f"; {not_submitted} configuration(s) not submitted (stored or queued)" if not_submitted else ""
        )
        console.print(f"{line}{extra}. Logs: {sweep['folder']}", markup=False, highlight=False)


def sweep_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The click options of ``partbench sweep``."""
    options = [
        click.option(
            "--encoder", "-e", "encoders", multiple=True, help="encoder name (repeatable): one job each"
        ),
        click.option(
            "--task", "-t", "tasks", multiple=True, help="task name, or part / object / all (repeatable)"
        ),
        click.option(
            "--dataset",
            "-d",
            "datasets",
            multiple=True,
            help="dataset (repeatable): one job per encoder x dataset [default: synparts]",
        ),
        click.option("--launcher", type=click.Choice(LAUNCHERS), default="local", show_default=True),
        click.option("--partition", "-p", help="Slurm partition"),
        click.option("--time", "time_min", type=int, help=f"minutes per job [default: {DEFAULT_TIME_MIN}]"),
        click.option(
            "--gpus", type=int, help="GPUs per job [default: 1 on Slurm, all of this machine's locally]"
        ),
        click.option("--cpus", type=int, help="CPUs per job (Slurm cpus-per-task)"),
        click.option("--mem", "mem_gb", type=float, help="memory per job in GB"),
        click.option("--account", help="Slurm account"),
        click.option("--qos", help="Slurm QOS"),
        click.option("--constraint", help="Slurm constraint (node features)"),
        click.option(
            "--parallel", type=int, help="at most N jobs of the sweep at once (Slurm array throttle)"
        ),
        click.option(
            "--slurm-option",
            "slurm_options",
            multiple=True,
            metavar="KEY=VALUE",
            help="any other sbatch option",
        ),
        click.option(
            "--setup",
            multiple=True,
            metavar="COMMAND",
            help="shell line run before each job (module load ...)",
        ),
        click.option("--name", help="the sweep's name [default: the date and time]"),
        click.option(
            "--folder",
            type=click.Path(path_type=Path, file_okay=False),
            help="submitit's folder for job files and logs [default: PARTBENCH_HOME/sweeps/NAME/submitit]",
        ),
        click.option("--wait", is_flag=True, help="wait for the jobs to end, then show their state"),
        click.option(
            "--status",
            "show_status",
            is_flag=True,
            help="show recorded sweeps: queued, running, done, failed",
        ),
        click.option(
            "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (in each job)"
        ),
        click.option("--batch-size", default=64, show_default=True, type=int),
        click.option(
            "--precision",
            type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
            default="auto",
            show_default=True,
        ),
        click.option(
            "--workers", type=int, help="image-decoding processes per job [default: the job's cores]"
        ),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--limit", type=int, help="read at most N images per split"),
        click.option("--repeats", default=1, show_default=True, type=int),
        click.option(
            "--option", "-o", "options", multiple=True, metavar="[TASK.]KEY=VALUE", help="task option"
        ),
        click.option("--force", is_flag=True, help="submit and rerun configurations that are already stored"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def command(
    *,
    encoders: Sequence[str],
    tasks: Sequence[str],
    datasets: Sequence[str],
    launcher: str,
    partition: str | None,
    time_min: int | None,
    gpus: int | None,
    cpus: int | None,
    mem_gb: float | None,
    account: str | None,
    qos: str | None,
    constraint: str | None,
    parallel: int | None,
    slurm_options: Sequence[str],
    setup: Sequence[str],
    name: str | None,
    folder: Path | None,
    wait: bool,
    show_status: bool,
    fmt: str,
    device: str,
    batch_size: int,
    precision: str,
    workers: int | None,
    seed: int,
    limit: int | None,
    repeats: int,
    options: Sequence[str],
    force: bool,
    db: str | None,
    console: Any,
    say: Callable[[str], None],
) -> None:
    """``partbench sweep``: submit, or with --status show."""
    if show_status:
        found = status([name] if name else ())
        if fmt == "json":
            click.echo(json.dumps(found, indent=2, default=str))
        else:
            print_status(found, console)
        return
    request = SweepRequest(
        encoders=encoders,
        tasks=tasks,
        datasets=datasets,
        run_options={
            "device": device,
            "batch_size": batch_size,
            "precision": precision,
            "workers": workers,
            "seed": seed,
            "limit": limit,
            "repeats": repeats,
            "options": list(options),
        },
        launcher=Launcher(
            kind=launcher,
            partition=partition,
            time_min=time_min,
            gpus=gpus,
            cpus=cpus,
            mem_gb=mem_gb,
            account=account,
            qos=qos,
            constraint=constraint,
            parallel=parallel,
            setup=setup,
            slurm_options=slurm_options,
        ),
        db=db,
        name=name,
        folder=folder,
        force=force,
    )
    record = submit(request, say=say)
    skipped = record["skipped"]
    if record["jobs"]:
        say(
            f"Sweep {record['name']}: submitted {len(record['jobs'])} job(s) ({record['launcher']}), "
            f"job ids {', '.join(j['job_id'] for j in record['jobs'])}"
            + (f"; {len(skipped)} configuration(s) already stored, running or queued" if skipped else "")
            + f". Logs in {record['folder']}; "
            + f"`partbench sweep --status --name {record['name']}` shows progress."
        )
    if wait and record["jobs"]:
        wait_for(record)
    if record["jobs"] and (wait or fmt == "json"):
        found = status([record["name"]])
        if fmt == "json":
            click.echo(json.dumps(found, indent=2, default=str))
        else:
            print_status(found, console)
        if any(j["state"] == "failed" for s in found for j in s["jobs"]):
            sys.exit(1)
