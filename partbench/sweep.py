"""``partbench sweep``: one job per encoder (x dataset) through submitit, on this machine
(``--launcher local``) or a Slurm cluster (``--launcher slurm``).

Every job calls ``partbench.runner.run``, the code path of ``partbench run``, and writes to
the shared results database and the shared feature cache (``PARTBENCH_HOME``, which on a
cluster must be a shared filesystem; ``PARTBENCH_DB`` a server every node reaches).

What is not submitted again, in two steps:

1. Before submitting, the sweep plans each job as ``partbench run`` would (names resolved,
   options typed, nothing loaded) and leaves out every task whose run is already stored as
   done with the same encoder, task, dataset, plugin versions, options, seed, limit, repeats
   and precision, or being run now, or queued by an earlier sweep; a job with nothing left
   is not submitted. This check cannot see what only loading tells (a weights file replaced
   under the same name, a dataset folder changed in place).
2. In the job, the runner claims each configuration by its exact hash, as ``partbench run``
   does: one stored (or claimed by another process) is skipped.

``--force`` skips step 1 and reruns stored configurations, as ``partbench run --force``.

A sweep's record lives in ``PARTBENCH_HOME/sweeps/NAME/``: ``sweep.json`` (the submitit job
ids, folder and what was skipped), ``jobs/N.json`` (each job's state, written by the job) and,
unless ``--folder`` says otherwise, submitit's own folder ``submitit/`` with every job's logs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from partbench.errors import PartbenchError

LAUNCHERS = ("local", "slurm")
STATES = ("queued", "running", "done", "failed", "unknown")
ENV_PASSED = ("PARTBENCH_HOME", "PARTBENCH_DB", "PARTBENCH_DATA", "PARTBENCH_LOAD_PLUGINS")
DEFAULT_TIME_MIN = 24 * 60
# Slurm states of a job that has not started, and of one that has ended.
SLURM_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


# --- what one job runs -------------------------------------------------------------------------


@dataclass
class JobSpec:
    """Everything a job needs, as plain data: submitit pickles it into the job's folder."""

    sweep: str
    index: int
    encoder: str
    dataset: str
    tasks: list[str]
    run_options: dict[str, Any]  # RunOptions fields; data_root as text
    db: str
    state_file: str
    env: dict[str, str] = field(default_factory=dict)


def _write_json(path: Path, value: Any) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(value, indent=1, default=str) + "\n")
    os.replace(partial, path)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_job(job: JobSpec) -> dict[str, Any]:
    """The job function: ``partbench run`` for one encoder on one dataset. Records its state
    in ``job.state_file`` as it starts and ends; returns the outcomes."""
    os.environ.update(job.env)
    state_file = Path(job.state_file)
    begun = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()}
    _write_json(state_file, begun)
    try:
        from partbench.plugins import registry
        from partbench.runner import RunOptions, run
        from partbench.store import Store

        options = dict(job.run_options)
        options["data_root"] = Path(options["data_root"]) if options.get("data_root") else None
        reg = registry()
        for problem in reg.problems:
            print(f"Warning: {problem}", flush=True)
        store = Store(job.db)
        try:
            outcomes = run(
                reg,
                store,
                [job.encoder],
                job.tasks,
                RunOptions(**options),
                say=lambda message: print(message, flush=True),
            )
        finally:
            store.close()
    except BaseException as exc:
        # A timeout (submitit's signal), a bad option, a crash: the runner has already marked
        # its runs interrupted or failed; the job says why it ended.
        error = str(exc) if isinstance(exc, PartbenchError) else f"{type(exc).__name__}: {exc}"
        _write_json(
            state_file,
            {
                **begun,
                "state": "failed",
                "finished_at": _now(),
                "error": error,
                "traceback": traceback.format_exc(),
            },
        )
        raise
    summary = [
        {
            "encoder": o.encoder,
            "task": o.task,
            "status": o.status,
            "run_id": o.run_id,
            "metric": o.metric,
            "value": None if o.value is None else o.value.value,
            "error": o.error,
        }
        for o in outcomes
    ]
    failed = [o for o in summary if o["status"] == "failed"]
    ended = {
        **begun,
        "state": "failed" if failed else "done",
        "finished_at": _now(),
        "outcomes": summary,
        "error": "; ".join(f"{o['task']}: {o['error']}" for o in failed) or None,
    }
    _write_json(state_file, ended)
    return ended


# --- launchers ---------------------------------------------------------------------------------


@dataclass
class Launcher:
    """Where jobs run and with what: mapped onto submitit's AutoExecutor parameters."""

    kind: str = "local"
    partition: str | None = None
    time_min: int | None = None
    gpus: int | None = None
    cpus: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    parallel: int | None = None
    setup: Sequence[str] = ()
    slurm_options: Sequence[str] = ()  # KEY=VALUE: any other sbatch option

    def gpus_per_job(self) -> int:
        if self.gpus is not None:
            return self.gpus
        if self.kind == "slurm":
            return 1
        # submitit hides every GPU it is not given from a local job: give it this machine's.
        import torch

        return torch.cuda.device_count()

    def parameters(self, name: str) -> dict[str, Any]:
        """AutoExecutor.update_parameters keywords."""
        if self.kind not in LAUNCHERS:
            raise PartbenchError(f"--launcher '{self.kind}': expected one of {', '.join(LAUNCHERS)}")
        for flag, value in (("--time", self.time_min), ("--cpus", self.cpus), ("--mem", self.mem_gb)):
            if value is not None and value <= 0:
                raise PartbenchError(f"{flag} must be positive, got {value}")
        if self.gpus is not None and self.gpus < 0:
            raise PartbenchError(f"--gpus must be 0 or more, got {self.gpus}")
        params: dict[str, Any] = {
            "name": name,
            "timeout_min": int(self.time_min or DEFAULT_TIME_MIN),
            "gpus_per_node": self.gpus_per_job(),
            "tasks_per_node": 1,
        }
        if self.cpus is not None:
            params["cpus_per_task"] = int(self.cpus)
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        slurm_only = {
            "--partition": self.partition,
            "--account": self.account,
            "--qos": self.qos,
            "--constraint": self.constraint,
            "--parallel": self.parallel,
        }
        if self.kind == "slurm":
            for flag, key in (
                ("--partition", "slurm_partition"),
                ("--account", "slurm_account"),
                ("--qos", "slurm_qos"),
                ("--constraint", "slurm_constraint"),
                ("--parallel", "slurm_array_parallelism"),
            ):
                if slurm_only[flag] is not None:
                    params[key] = slurm_only[flag]
            if self.setup:
                params["slurm_setup"] = list(self.setup)
            extra = {}
            for item in self.slurm_options:
                key, sep, value = item.partition("=")
                if not sep or not key.strip():
                    raise PartbenchError(f"--slurm-option '{item}': expected KEY=VALUE (an sbatch option)")
                extra[key.strip().lstrip("-").replace("-", "_")] = value
            if extra:
                params["slurm_additional_parameters"] = extra
        else:
            given = [flag for flag, value in slurm_only.items() if value is not None]
            if self.slurm_options:
                given.append("--slurm-option")
            if given:
                raise PartbenchError(f"{', '.join(given)}: only with --launcher slurm")
            if self.setup:
                params["local_setup"] = list(self.setup)
        return params

    def executor(self, folder: Path, name: str) -> Any:
        try:
            import submitit
        except ImportError:
            raise PartbenchError("partbench sweep needs submitit: pip install 'partbench[cluster]'") from None
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=self.kind)
        except RuntimeError as exc:  # submitit looks for srun: no Slurm on this machine
            raise PartbenchError(f"cannot submit to {self.kind}: {exc}") from None
        try:
            executor.update_parameters(**self.parameters(name))
        except (NameError, ValueError, AssertionError) as exc:
            raise PartbenchError(f"submitit refused the {self.kind} parameters: {exc}") from None
        return executor


# --- the check before submitting ---------------------------------------------------------------


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def expected_precision(precision: str, device: str, launcher: Launcher) -> str:
    """The precision a job will run at, as the runner resolves it on the job's machine."""
    if precision != "auto":
        return precision
    if launcher.kind == "local":
        from partbench.runner.plan import resolve_device, resolve_precision

        return resolve_precision(precision, resolve_device(device))
    if device == "cpu":
        return "fp32"
    if device.startswith("cuda") or launcher.gpus_per_job() > 0:
        return "bf16"
    return "fp32"


def expected_config(plan: Any, encoder_name: str, encoder_spec: Any, task_spec: Any, precision: str) -> dict:
    """What the submitter knows of the run's configuration without loading anything: a subset
    of the stored ``config``, compared field by field."""
    opts = plan.opts
    return _plain(
        {
            "encoder": {
                "name": encoder_name,
                "plugin": encoder_spec.plugin,
                "spec_version": encoder_spec.version,
                "plugin_version": plan.plugin_version(encoder_spec),
            },
            "task": {
                "name": task_spec.name,
                "version": task_spec.version,
                "plugin": task_spec.plugin,
                "plugin_version": plan.plugin_version(task_spec),
                "options": plan.options[task_spec.name],
            },
            "dataset": {
                "name": plan.dataset.name,
                "version": plan.dataset.version,
                "plugin": plan.dataset.plugin,
                "plugin_version": plan.plugin_version(plan.dataset),
                "root": str(plan.data_root) if plan.data_root else None,
                "options": plan.dataset_options,
            },
            "seed": opts.seed,
            "limit": opts.limit,
            "repeats": opts.repeats,
            "compile": opts.compile,
            "precision": precision,
        }
    )


def _covers(config: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    for key, want in expected.items():
        have = config.get(key) if isinstance(config, Mapping) else None
        if isinstance(want, dict):
            if not isinstance(have, Mapping) or not _covers(have, want):
                return False
        elif have != want:
            return False
    return True


def config_key(expected: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:20]


# --- sweep records -----------------------------------------------------------------------------


def sweeps_root() -> Path:
    from partbench.paths import home

    return home() / "sweeps"


def _load_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "jobs" in record else None


def records() -> list[dict[str, Any]]:
    """Every sweep recorded under PARTBENCH_HOME/sweeps, oldest first."""
    root = sweeps_root()
    if not root.is_dir():
        return []
    found = [r for r in (_load_record(p) for p in root.iterdir() if p.is_dir()) if r is not None]
    return sorted(found, key=lambda r: (r.get("created_at", ""), r.get("name", "")))


def _pid_alive(pid: int) -> bool:
    from partbench.store.liveness import pid_alive as alive

    return alive(pid)


def job_states(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each job's state: queued, running, done, failed (or unknown), from what the job wrote
    and what the launcher says about it (one sacct call for a Slurm sweep)."""
    launcher = _launcher_states(record)
    out = []
    for job in record["jobs"]:
        try:
            written = json.loads((Path(record["path"]) / job["state_file"]).read_text())
        except (OSError, ValueError):
            written = {}
        said = launcher.get(job["job_id"], "unknown")
        if written.get("state") in ("done", "failed"):
            out.append(written)
        elif written.get("state") == "running":
            if said in ("queued", "running", "unknown"):
                out.append(written)
            else:  # killed: out of time or memory, cancelled, its node lost
                out.append({**written, "state": "failed", "error": f"the job ended while running ({said})"})
        elif said in ("queued", "running"):
            out.append({"state": said})  # submitted; partbench has not started in it yet
        elif said == "unknown":
            out.append(
                {"state": "unknown", "error": "the launcher cannot tell (is this the submitting machine?)"}
            )
        else:
            hint = f"the job ended before partbench started ({said}); see {_log_hint(record, job)}"
            out.append({"state": "failed", "error": hint})
    return out


def _log_hint(record: Mapping[str, Any], job: Mapping[str, Any]) -> str:
    return str(Path(record["folder"]) / f"{job['job_id']}_0_log.err")


def _launcher_states(record: Mapping[str, Any]) -> dict[str, str]:
    """job id -> queued, running, or the launcher's word for how it ended ('unknown' when it
    cannot tell)."""
    ids = [str(job["job_id"]) for job in record["jobs"]]
    if not ids:
        return {}
    if record["launcher"] == "local":
        # A local job's id is its controller's pid, on the machine that submitted it.
        if record.get("host") != socket.gethostname():
            return dict.fromkeys(ids, "unknown")
        return {i: ("running" if i.isdigit() and _pid_alive(int(i)) else "ended") for i in ids}
    try:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=0)  # our own: never a cached answer
        for i in ids:
            watcher.register_job(i)
        watcher.update()  # one sacct call for the whole sweep
        raw = {i: watcher.get_info(i, mode="cache").get("State") or "UNKNOWN" for i in ids}
    except Exception:
        return dict.fromkeys(ids, "unknown")
    states = {}
    for i, state in raw.items():
        word = state.split()[0].upper() if state.strip() else "UNKNOWN"  # "CANCELLED by 1000"
        if word in SLURM_WAITING:
            states[i] = "queued"
        elif word in SLURM_RUNNING:
            states[i] = "running"
        else:
            states[i] = "unknown" if word == "UNKNOWN" else word
    return states


def _pending_keys() -> dict[str, str]:
    """config key -> sweep and job, for every job of earlier sweeps still queued or running."""
    keys: dict[str, str] = {}
    for record in records():
        for job, state in zip(record["jobs"], job_states(record), strict=True):
            if state["state"] in ("queued", "running"):
                for key in job.get("keys", {}).values():
                    keys[key] = f"{state['state']} in sweep {record['name']} (job {job['job_id']})"
    return keys


# --- submitting --------------------------------------------------------------------------------


@dataclass
class SweepRequest:
    encoders: Sequence[str]
    tasks: Sequence[str]
    datasets: Sequence[str]
    run_options: dict[str, Any]  # RunOptions fields other than dataset (and data_root)
    launcher: Launcher
    db: str | None = None
    name: str | None = None
    folder: Path | None = None
    force: bool = False


def _unique_name(wanted: str | None) -> str:
    root = sweeps_root()
    if wanted:
        if not all(c.isalnum() or c in "-_." for c in wanted) or wanted.startswith("."):
            raise PartbenchError(f"--name '{wanted}': use letters, digits, - _ and .")
        if (root / wanted).exists():
            raise PartbenchError(f"a sweep named '{wanted}' exists already ({root / wanted})")
        return wanted
    base = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name, n = base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def submit(request: SweepRequest, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan every (encoder, dataset) job, leave out what is stored or queued, submit the rest
    through submitit and record the sweep. Returns the record."""
    from partbench.paths import database_url, home
    from partbench.plugins import registry
    from partbench.runner import RunOptions, make_plan
    from partbench.store import Store

    if not request.encoders:
        raise PartbenchError("give at least one --encoder (or --status to see earlier sweeps)")
    if not request.tasks:
        raise PartbenchError("give at least one --task (a name, or part / object / all)")
    datasets = list(dict.fromkeys(request.datasets or ["synparts"]))
    encoders = list(dict.fromkeys(request.encoders))
    launcher = request.launcher
    launcher.parameters("check")  # bad launcher options fail before anything is planned
    reg = registry()
    for problem in reg.problems:
        say(f"Warning: {problem}")
    db_url = database_url(request.db)
    store = Store(db_url)
    db_url = _absolute_sqlite(db_url, store)
    store.check_writable()
    base = {k: v for k, v in request.run_options.items() if k not in ("dataset", "data_root")}
    base["force"] = request.force
    precision = expected_precision(base.get("precision", "auto"), base.get("device", "auto"), launcher)
    pending = {} if request.force else _pending_keys()

    planned: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for dataset in datasets:
        opts = RunOptions(dataset=dataset, **base)
        plan = make_plan(reg, encoders, request.tasks, opts)  # every name and option checked first
        done = [] if request.force else store.runs(status="done", dataset=dataset)
        running = [] if request.force else store.runs(status="running", dataset=dataset)
        for name, spec in plan.encoders:
            todo, keys = [], {}
            for task in plan.tasks:
                expected = expected_config(plan, name, spec, task, precision)
                key = config_key(expected)
                why = None
                if not request.force:
                    if any(
                        r.encoder == name and r.task == task.name and _covers(r.config, expected)
                        for r in done
                    ):
                        why = "stored"
                    elif any(
                        r.encoder == name and r.task == task.name and _covers(r.config, expected)
                        for r in running
                    ):
                        why = "running now"
                    elif key in pending:
                        why = pending[key]
                if why is None:
                    todo.append(task.name)
                    keys[task.name] = key
                else:
                    skipped.append({"encoder": name, "dataset": dataset, "task": task.name, "reason": why})
            if todo:
                planned.append(
                    {
                        "encoder": name,
                        "dataset": dataset,
                        "tasks": todo,
                        "keys": keys,
                        "data_root": str(plan.data_root) if plan.data_root else None,
                    }
                )
    store.close()

    name = _unique_name(request.name)
    path = sweeps_root() / name
    folder = (request.folder or path / "submitit").expanduser().resolve()
    record: dict[str, Any] = {
        "name": name,
        "created_at": _now(),
        "host": socket.gethostname(),
        "launcher": launcher.kind,
        "parameters": launcher.parameters(f"partbench-{name}"),
        "path": str(path),
        "folder": str(folder),
        "db": store.where,
        "tasks": list(request.tasks),
        "run_options": _plain(base),
        "jobs": [],
        "skipped": skipped,
    }
    if not planned:
        say(f"Nothing to submit: all {len(skipped)} configuration(s) are stored, running or queued.")
        return record

    env = {k: os.environ[k] for k in ENV_PASSED if os.environ.get(k)}
    env["PARTBENCH_HOME"] = str(home().expanduser().resolve())
    env["PARTBENCH_DB"] = db_url
    specs = [
        JobSpec(
            sweep=name,
            index=i,
            encoder=p["encoder"],
            dataset=p["dataset"],
            tasks=p["tasks"],
            run_options=_plain({**base, "dataset": p["dataset"], "data_root": p["data_root"]}),
            db=db_url,
            state_file=str(path / "jobs" / f"{i}.json"),
            env=env,
        )
        for i, p in enumerate(planned)
    ]
    executor = launcher.executor(folder, f"partbench-{name}")
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    try:
        with executor.batch():
            jobs = [executor.submit(run_job, spec) for spec in specs]
    except PartbenchError:
        raise
    except Exception as exc:
        _write_json(path / "sweep.json", {**record, "error": str(exc)})
        raise PartbenchError(f"submitting the sweep failed: {exc}") from exc
    for spec, p, job in zip(specs, planned, jobs, strict=True):
        record["jobs"].append(
            {
                "index": spec.index,
                "job_id": str(job.job_id),
                "encoder": p["encoder"],
                "dataset": p["dataset"],
                "tasks": p["tasks"],
                "keys": p["keys"],
                "state_file": f"jobs/{spec.index}.json",
            }
        )
    _write_json(path / "sweep.json", record)
    record["_jobs"] = jobs  # the live handles, for --wait; not written
    return record


def _absolute_sqlite(url: str, store: Any) -> str:
    """A relative SQLite path means this folder here; a job may start elsewhere."""
    if store.is_sqlite and store.target.path is not None and not store.target.path.is_absolute():
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if not str(parsed.database or "").startswith("file:"):
            return parsed.set(database=str(store.target.path.resolve())).render_as_string(hide_password=False)
    return url


def wait_for(record: Mapping[str, Any], poll: float = 1.0, timeout: float | None = None) -> None:
    """Until every job of the sweep has ended."""
    started = time.monotonic()
    while True:
        states = [state["state"] for state in job_states(record)]
        if all(s in ("done", "failed") for s in states):
            return
        if timeout is not None and time.monotonic() - started > timeout:
            raise PartbenchError(f"sweep {record['name']}: jobs still running after {timeout:.0f} s")
        for job in record.get("_jobs", []):
            if job.done():  # reaps a finished local job's process
                pass
        time.sleep(poll)


# --- status ------------------------------------------------------------------------------------


def status(names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The recorded sweeps (or those named) with every job's state."""
    found = records()
    if names:
        known = {r["name"] for r in found}
        missing = [n for n in names if n not in known]
        if missing:
            raise PartbenchError(
                f"no sweep named {', '.join(missing)} in {sweeps_root()}"
                + (f"; known: {', '.join(sorted(known))}" if known else "")
            )
        found = [r for r in found if r["name"] in names]
    out = []
    for record in found:
        jobs = []
        for job, state in zip(record["jobs"], job_states(record), strict=True):
            outcomes = state.get("outcomes") or []
            jobs.append(
                {
                    "job_id": job["job_id"],
                    "encoder": job["encoder"],
                    "dataset": job["dataset"],
                    "tasks": job["tasks"],
                    "state": state.get("state", "unknown"),
                    "host": state.get("host"),
                    "runs": {
                        s: sum(o["status"] == s for o in outcomes) for s in ("done", "skipped", "failed")
                    },
                    "error": state.get("error"),
                    "log": _log_hint(record, job),
                }
            )
        counts = {s: sum(j["state"] == s for j in jobs) for s in STATES}
        out.append(
            {
                "name": record["name"],
                "created_at": record.get("created_at"),
                "launcher": record["launcher"],
                "folder": record["folder"],
                "db": record.get("db"),
                "jobs": jobs,
                "counts": counts,
                "skipped": record.get("skipped", []),
            }
        )
    return out


def print_status(sweeps: Sequence[Mapping[str, Any]], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    if not sweeps:
        console.print(f"No sweeps recorded in {sweeps_root()}.", markup=False)
        return
    for sweep in sweeps:
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


# --- the command's options, kept here so cli.py only wires them ---------------------------------


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
