"""``partbench sweep``: one job per encoder (x dataset) through submitit, on this machine
(``--launcher local``) or a Slurm cluster (``--launcher slurm``).

Every job calls ``partbench.runner.run``, the code path of ``partbench run``, and writes to
the shared results database and the shared feature cache (``PARTBENCH_HOME``, which on a
cluster must be a shared filesystem; ``PARTBENCH_DB`` a server every node reaches).

What is not submitted again, in two steps:

1. Before submitting, the sweep plans each job as ``partbench run`` would (names resolved,
   options typed, nothing loaded) for the machine the job lands on, and leaves out every
   task whose declared configuration (``runner.config.declared_config``: encoder, task,
   dataset, plugin versions, options, seed, limit, repeats, compile, precision) a run stored
   as done holds, or one being run now, or one queued by an earlier sweep; a job with
   nothing left is not submitted. This check cannot see what only loading tells (a weights file replaced
   under the same name, a dataset folder changed in place).
2. In the job, the runner claims each configuration by its exact hash, as ``partbench run``
   does: one stored (or claimed by another process) is skipped.

``--force`` skips step 1 and reruns stored configurations, as ``partbench run --force``.

A sweep's record lives in ``PARTBENCH_HOME/sweeps/NAME/``: ``sweep.json`` (the submitit job
ids, folder and what was skipped), ``jobs/N.json`` (each job's state, written by the job) and,
unless ``--folder`` says otherwise, submitit's own folder ``submitit/`` with every job's logs.
The command line (options, messages, the status table) is partbench.cli_sweep's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import socket
import time
import traceback
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partbench.errors import PartbenchError

LAUNCHERS = ("local", "slurm")
STATES = ("queued", "running", "done", "failed", "unknown")
ENV_PASSED = ("PARTBENCH_HOME", "PARTBENCH_DB", "PARTBENCH_DATA", "PARTBENCH_LOAD_PLUGINS")
DEFAULT_TIME_MIN = 24 * 60
# Slurm's --mem takes an integer count of megabytes (submitit writes GB): 2**53 MB is beyond any
# node, and below it the value converts to an integer without overflow.
MAX_MEM_GB = 2**43
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
            # NaN compares false with everything: it must fail the finite test, not pass "<= 0".
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise PartbenchError(f"{flag} must be positive and finite, got {value}")
        if self.mem_gb is not None and self.mem_gb > MAX_MEM_GB:
            raise PartbenchError(f"--mem must be at most {MAX_MEM_GB} GB, got {self.mem_gb:g}")
        if self.gpus is not None and self.gpus < 0:
            raise PartbenchError(f"--gpus must be 0 or more, got {self.gpus}")
        if self.parallel is not None and self.parallel < 1:
            raise PartbenchError(f"--parallel must be at least 1, got {self.parallel}")
        for flag, text in (
            ("--partition", self.partition),
            ("--account", self.account),
            ("--qos", self.qos),
            ("--constraint", self.constraint),
            ("--name", name),
            *(("--setup", line) for line in self.setup),
            *(("--slurm-option", item) for item in self.slurm_options),
        ):
            _one_line(flag, text)
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

    def job_machine(self, device: str) -> Any:
        """The machine a job lands on, as far as the submitter can tell: this one for the local
        launcher; on Slurm, a GPU node when the job asks for CUDA or for GPUs."""
        from partbench.runner import Machine

        if self.kind == "local":
            return Machine.here(device)
        gpu = device != "cpu" and (device.startswith("cuda") or self.gpus_per_job() > 0)
        return Machine.elsewhere("cuda" if gpu else "cpu")

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


def _one_line(flag: str, text: str | None) -> None:
    """Refuse a control character (a newline above all) in a value written into the batch
    script: there each option is one ``#SBATCH`` line and each setup one shell line, so a
    newline would add lines of the value's choosing."""
    if text is None:
        return
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise PartbenchError(
            f"{flag} {text!r}: contains the control character {bad!r}; the batch script takes each "
            "value on one line (give several values as several options)"
        )


# --- the check before submitting ---------------------------------------------------------------


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def config_key(declared: Mapping[str, Any]) -> str:
    """A declared configuration's name in the sweep records, to know it queued by another sweep."""
    return hashlib.sha256(json.dumps(_plain(declared), sort_keys=True).encode()).hexdigest()[:20]


# --- sweep records -----------------------------------------------------------------------------


def sweeps_root() -> Path:
    from partbench.paths import home

    return home() / "sweeps"


def _load_record(folder: Path) -> dict[str, Any] | str | None:
    """The sweep recorded in ``folder``; why it cannot be read when its ``sweep.json`` is
    damaged; None for a folder without one (a sweep being submitted writes it last)."""
    path = folder / "sweep.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc})"
    except (ValueError, RecursionError):
        return f"{path} is not JSON"
    why = _record_problem(record)
    return f"{path}: {why}" if why else record


def _record_problem(record: Any) -> str | None:
    """What makes a sweep record unusable, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key in ("name", "launcher", "path", "folder"):
        if not isinstance(record.get(key), str):
            return f"'{key}' is missing or not text"
    jobs = record.get("jobs")
    if not isinstance(jobs, list):
        return "'jobs' is missing or not a list"
    for k, job in enumerate(jobs):
        if not isinstance(job, dict):
            return f"job {k} is not an object"
        for key in ("job_id", "encoder", "dataset", "state_file"):
            if not isinstance(job.get(key), str):
                return f"job {k}: '{key}' is missing or not text"
        if not isinstance(job.get("tasks"), list):
            return f"job {k}: 'tasks' is missing or not a list"
    return None


def _scan() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The readable sweep records, oldest first, and the damaged ones (folder name -> why)."""
    root = sweeps_root()
    if not root.is_dir():
        return [], {}
    found, damaged = [], {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        loaded = _load_record(folder)
        if isinstance(loaded, str):
            damaged[folder.name] = loaded
        elif loaded is not None:
            found.append(loaded)
    return sorted(found, key=lambda r: (str(r.get("created_at", "")), r["name"])), damaged


def records() -> list[dict[str, Any]]:
    """Every readable sweep recorded under PARTBENCH_HOME/sweeps, oldest first."""
    return _scan()[0]


def _pid_alive(pid: int) -> bool:
    from partbench.store.liveness import pid_alive as alive

    return alive(pid)


def job_states(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each job's state: queued, running, done, failed (or unknown), from what the job wrote
    and what the launcher says about it (one sacct call for a Slurm sweep)."""
    launcher = _launcher_states(record)

    def said_of(job: Mapping[str, Any]) -> str:
        return launcher.get(job["job_id"], "unknown")

    out = []
    for job in record["jobs"]:
        state_file = Path(record["path"]) / job["state_file"]
        try:
            written = json.loads(state_file.read_text())
        except FileNotFoundError:
            written = {}  # the job has not started
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            written = f"{state_file} is not readable JSON"
        if not isinstance(written, str):
            written = _state_problem(written, state_file) or written
        if isinstance(written, str):
            # The job's own word is lost: say so, with what the launcher still knows.
            out.append(
                {"state": "unknown", "error": f"damaged job record: {written} (launcher: {said_of(job)})"}
            )
            continue
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


def _state_problem(written: Any, path: Path) -> str | None:
    """What makes a job's state file unusable, or None."""
    if not isinstance(written, dict):
        return f"{path} is not a JSON object"
    if "state" in written and written["state"] not in STATES:
        return f"{path}: state {written['state']!r} is not one of {', '.join(STATES)}"
    outcomes = written.get("outcomes")
    if outcomes is not None and not (
        isinstance(outcomes, list)
        and all(isinstance(o, dict) and isinstance(o.get("status"), str) for o in outcomes)
    ):
        return f"{path}: 'outcomes' is not a list of runs with a status"
    return None


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
    from partbench.paths import database_url
    from partbench.plugins import registry
    from partbench.store import Store

    if not request.encoders:
        raise PartbenchError("give at least one --encoder (or --status to see earlier sweeps)")
    if not request.tasks:
        raise PartbenchError("give at least one --task (a name, or part / object / all)")
    request.launcher.parameters("check")  # bad launcher options fail before anything is planned
    reg = registry()
    for problem in reg.problems:
        say(f"Warning: {problem}")
    db_url = database_url(request.db)
    store = Store(db_url)
    db_url = _absolute_sqlite(db_url, store)
    store.check_writable()
    base = {k: v for k, v in request.run_options.items() if k not in ("dataset", "data_root")}
    base["force"] = request.force
    try:
        planned, skipped = _plan_jobs(request, reg, store, base)
    finally:
        store.close()
    record = _new_record(request, base, store.where, skipped)
    if not planned:
        say(f"Nothing to submit: all {len(skipped)} configuration(s) are stored, running or queued.")
        return record
    return _launch(request, record, planned, base, db_url)


def _plan_jobs(
    request: SweepRequest, reg: Any, store: Any, base: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each (encoder, dataset) job with the tasks it has left, and each configuration left out
    with why: its declared configuration is stored as done, being run now, or queued by an
    earlier sweep."""
    from partbench.runner import RunOptions, declared_config, make_plan
    from partbench.runner.config import covers

    machine = request.launcher.job_machine(base.get("device", "auto"))
    pending = {} if request.force else _pending_keys()
    planned: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for dataset in dict.fromkeys(request.datasets or ["synparts"]):
        # every name and option checked first
        plan = make_plan(
            reg,
            list(dict.fromkeys(request.encoders)),
            request.tasks,
            RunOptions(dataset=dataset, **base),
            machine,
        )
        done = [] if request.force else store.runs(status="done", dataset=dataset)
        running = [] if request.force else store.runs(status="running", dataset=dataset)
        for name, spec in plan.encoders:
            todo, keys = [], {}
            for task in plan.tasks:
                # A layer curve is one configuration per stage; stage=all's stages are known
                # only once the encoder loads, so such a curve is never found stored here.
                sweep = plan.stage_sweeps.get(task.name, ())
                declared_all = (
                    [declared_config(plan, name, spec, task, o) for o in plan.stage_options(task, 0)]
                    if task.name in plan.stage_sweeps
                    else [declared_config(plan, name, spec, task)]
                )
                key = config_key({"stages": "all"} if sweep is None else {"runs": declared_all})
                if len(declared_all) == 1:
                    key = config_key(declared_all[0])  # as a plain run's key has always been
                mine = [r for r in done + running if r.encoder == name and r.task == task.name]
                held = {
                    status: bool(declared_all)
                    and all(
                        any(r.status == status and covers(r.config, d) for r in mine) for d in declared_all
                    )
                    for status in ("done", "running")
                }
                why = None
                if not request.force:
                    if held["done"]:
                        why = "stored"
                    elif held["running"]:
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
    return planned, skipped


def _new_record(
    request: SweepRequest, base: dict[str, Any], db: str, skipped: list[dict[str, Any]]
) -> dict[str, Any]:
    name = _unique_name(request.name)
    path = sweeps_root() / name
    return {
        "name": name,
        "created_at": _now(),
        "host": socket.gethostname(),
        "launcher": request.launcher.kind,
        "parameters": request.launcher.parameters(f"partbench-{name}"),
        "path": str(path),
        "folder": str((request.folder or path / "submitit").expanduser().resolve()),
        "db": db,
        "tasks": list(request.tasks),
        "run_options": _plain(base),
        "jobs": [],
        "skipped": skipped,
    }


def _launch(
    request: SweepRequest,
    record: dict[str, Any],
    planned: list[dict[str, Any]],
    base: dict[str, Any],
    db_url: str,
) -> dict[str, Any]:
    """Submit one job per planned entry through submitit and write the sweep's record."""
    from partbench.paths import home

    name, path = record["name"], Path(record["path"])
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
    executor = request.launcher.executor(Path(record["folder"]), f"partbench-{name}")
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
    found, damaged = _scan()
    if names:
        known = {r["name"] for r in found} | set(damaged)
        missing = [n for n in names if n not in known]
        if missing:
            raise PartbenchError(
                f"no sweep named {', '.join(missing)} in {sweeps_root()}"
                + (f"; known: {', '.join(sorted(known))}" if known else "")
            )
        found = [r for r in found if r["name"] in names]
        damaged = {k: v for k, v in damaged.items() if k in names}
    # A damaged record is shown with why, not left out: its jobs may still be running.
    out: list[dict[str, Any]] = [
        {
            "name": folder,
            "damaged": why,
            "folder": str(sweeps_root() / folder),
            "jobs": [],
            "counts": dict.fromkeys(STATES, 0),
            "skipped": [],
        }
        for folder, why in damaged.items()
    ]
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
                "damaged": None,
                "created_at": record.get("created_at"),
                "launcher": record["launcher"],
                "folder": record["folder"],
                "db": record.get("db"),
                "jobs": jobs,
                "counts": counts,
                "skipped": record.get("skipped") if isinstance(record.get("skipped"), list) else [],
            }
        )
    return out
