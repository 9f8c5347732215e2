"""The study-scale check: partbench on data the size of the study's, end to end, as a user runs it.

    python benchmarks/study_scale.py                  # GPU: full size; CPU: a small size
    python benchmarks/study_scale.py --images 400     # any size

It builds, in a scratch folder:
- a CUB-200-2011 tree in the official layout (11,788 JPEGs at 500 x 375 at full size, part
  locations for the four parts the study uses; the pixels are synthetic),
- a ViT-B/16 checkpoint in MAE's official format (random weights: speed does not depend on them),
- an ADE20K-Part-sized tree (20,210 training and 2,000 validation image and label-map pairs),

then runs, each as its own `partbench` process:
1. cold: `partbench run --encoder mae --weights CKPT --dataset cub200` with the study's part
   tasks (retrieval over all crops, linear and attentive probes: the tasks the earlier figures
   timed; `--task part` now also holds keypoint correspondence),
2. warm: a second part task on the same encoder and data (it must run no encoder pass),
3. `partbench run --encoder mae --task part-seg --dataset ade20k-part`,

and prints one table: wall time, the extraction's images per second end to end and
forward-only, the device's busy share during extraction, the scoring time, the peak host
memory (anonymous memory of the process and its workers; the memory-mapped feature cache is
page cache and reported apart) and the peak GPU memory, with the card's name. Before each
step it asks `partbench run ... --dry-run` for its forecast, printed against what the step
then measured (its bytes against the feature cache's growth on disk). `--ade-study-limit N`
adds ADE20K-Part part-seg at the study's 512 px windows on N images a split. `--skip-cub`,
`--skip-ade` and `--skip-ade-full` split the steps over several calls of a lent card (10
minutes each). Figures are also written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from partbench.cache import size_of
from partbench.timing import STALLS

CUB_FULL = 11_788
# parts/parts.txt of the release, in order (the reader checks the names it selects).
CUB_PART_NAMES = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
    "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat",
)  # fmt: skip
ADE_FULL = (20_210, 2_000)
PARTS = {11: (0.32, 0.30), 12: (0.35, 0.85), 9: (0.72, 0.40), 14: (0.85, 0.75)}  # x, y shares


def _cub_image(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    path, seed, w, h = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path, quality=90)


def build_cub(root: Path, images: int, pool: ProcessPoolExecutor, size=(500, 375)) -> Path:
    """The official layout: images.txt, train_test_split.txt, image_class_labels.txt,
    classes.txt, parts/parts.txt, parts/part_locs.txt and images/<class>/<name>.jpg."""
    w, h = size
    (root / "parts").mkdir(parents=True, exist_ok=True)
    names = [
        f"{1 + i % 200:03d}.Species_{1 + i % 200}/Species_{1 + i % 200}_{i:05d}.jpg" for i in range(images)
    ]
    (root / "images.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    # About half the images train, as in the release (5,994 of 11,788).
    (root / "train_test_split.txt").write_text("".join(f"{i + 1} {int(i % 2 == 0)}\n" for i in range(images)))
    (root / "image_class_labels.txt").write_text("".join(f"{i + 1} {1 + i % 200}\n" for i in range(images)))
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Species_{c}\n" for c in range(1, 201)))
    parts = "".join(f"{k} {name}\n" for k, name in enumerate(CUB_PART_NAMES, start=1))
    (root / "parts" / "parts.txt").write_text(parts)
    rng = np.random.default_rng(1)
    lines = []
    for i in range(images):
        for part in range(1, 16):
            if part in PARTS:
                x, y = PARTS[part]
                jx, jy = rng.uniform(-0.04, 0.04, 2)
                lines.append(f"{i + 1} {part} {(x + jx) * w:.1f} {(y + jy) * h:.1f} 1\n")
            else:
                lines.append(f"{i + 1} {part} 0.0 0.0 0\n")
    (root / "parts" / "part_locs.txt").write_text("".join(lines))
    list(pool.map(_cub_image, [(root / "images" / n, i, w, h) for i, n in enumerate(names)], chunksize=64))
    return root


def _ade_pair(args: tuple[Path, Path, int]) -> None:
    from PIL import Image

    image_path, mask_path, seed = args
    rng = np.random.default_rng(seed)
    w, h = 512, 384
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(image_path, quality=90)
    # Blocks of part labels 1..209 (0 is "no part": reduce-zero-label makes it ignored).
    blocks = rng.integers(0, 210, (h // 32, w // 32), dtype=np.uint8)
    Image.fromarray(np.kron(blocks, np.ones((32, 32), dtype=np.uint8))).save(mask_path)


def build_ade_part(root: Path, train: int, val: int, pool: ProcessPoolExecutor) -> Path:
    """ADE20K-Part as the study's tree holds it: img/{train,val}/*.jpg, ann/{train,val}/*.png."""
    jobs = []
    for split, n in (("train", train), ("val", val)):
        (root / "img" / split).mkdir(parents=True, exist_ok=True)
        (root / "ann" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"ADE_{split}_{i:08d}"
            jobs.append((root / "img" / split / f"{stem}.jpg", root / "ann" / split / f"{stem}.png", i))
    list(pool.map(_ade_pair, jobs, chunksize=64))
    return root


def build_checkpoint(path: Path) -> Path:
    """A ViT-B/16 in MAE's released format: {"model": encoder state dict}, no head."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    torch.save({"model": model.state_dict()}, path)
    return path


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(k) for k in kids]
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Memory(threading.Thread):
    """Samples the peak anonymous memory of a process and its children (what the machine must
    hold), and the main process's file-backed resident memory (the mapped feature cache)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.anon_kb, self.file_kb = pid, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            anon = sum(_status_kb(p, "RssAnon") + _status_kb(p, "RssShmem") for p in _tree(self.pid))
            self.anon_kb = max(self.anon_kb, anon)
            self.file_kb = max(self.file_kb, _status_kb(self.pid, "RssFile"))


def partbench(args: list[str], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "partbench", *args], env=env, text=True)
    mem = Memory(proc.pid)
    mem.start()
    code = proc.wait()
    mem.done.set()
    mem.join()
    if code != 0:  # reported in the table; the later steps still run
        print(f"partbench {' '.join(args)} exited with {code}", file=sys.stderr)
    return {
        "wall": time.perf_counter() - t0,
        "host_gib": mem.anon_kb / 2**20,
        "cache_gib": mem.file_kb / 2**20,
        "exit_code": code,
    }


def stored_runs(db: str, env: dict[str, str]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "partbench", "runs", "--format", "json", "--db", db],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def forecast(args: list[str], env: dict[str, str]) -> dict:
    """What ``partbench run ARGS --dry-run`` predicts for the step, before it runs: the passes it
    would encode, the bytes they would write, the peak host and device memory and, where this
    machine has timed the encoder before, the time of its passes."""
    done = subprocess.run(
        [sys.executable, "-m", "partbench", "run", *args, "--dry-run", "--json"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout)[-500:]}
    encoders = [e for f in json.loads(done.stdout) for e in f["encoders"]]
    passes = [p for e in encoders for p in e["passes"]]
    memory = [p["memory"] for p in passes if "memory" in p]
    timed = [e["seconds"] for e in encoders if e.get("passes")]
    return {
        "encoder_passes": sum(p["action"] == "encode" for p in passes),
        "written_mb": sum(p["bytes"] for p in passes) / 2**20,
        # Forecast for the encoded passes only (the process as loaded, plus the pass).
        "peak_host_gib": max(m["host_mb"] for m in memory) / 1024 if memory else None,
        "peak_gpu_gib": max(m.get("device_mb", 0) for m in memory) / 1024 if memory else None,
        "extraction_seconds": sum(timed) if timed and None not in timed else None,
    }


def summarise(step: str, proc: dict, runs: list[dict]) -> dict:
    timings = [r["timing"] or {} for r in runs]
    # Runs that shared a pass each carry its figures: count every pass once.
    passes = {name: figures for t in timings for name, figures in (t.get("passes") or {}).items()}
    images = sum(p["images"] for p in passes.values())
    wall = sum(p["wall_seconds"] for p in passes.values())
    forward = sum(p["forward_seconds"] for p in passes.values())
    timed = sum((p["images_per_second"] or 0) * p["forward_seconds"] for p in passes.values())
    busy = sum((p["device_busy_share"] or 0) * p["wall_seconds"] for p in passes.values())
    return {
        "step": step if proc["exit_code"] == 0 else f"{step} (exit {proc['exit_code']})",
        "runs": [
            f"{r['task']}: {r['status']} {r['score']:.2f}" if r["score"] is not None else r["task"]
            for r in runs
        ],
        "wall_seconds": proc["wall"],
        "encoder_passes": len(passes),
        "extraction_seconds": wall,
        "images": images,
        "end_to_end_images_per_second": images / wall if wall else None,
        "forward_images_per_second": timed / forward if forward else None,
        "device_busy_share": busy / wall if wall else None,
        "scoring_seconds": sum(t.get("scoring_seconds", 0) for t in timings),
        "peak_host_gib": proc["host_gib"],
        "peak_mapped_cache_gib": proc["cache_gib"],
        "peak_gpu_gib": max((t.get("peak_memory_mb") or 0 for t in timings), default=0) / 1024,
        # Where the extraction's wall clock went besides the forward (older runs lack these).
        **{key: sum(p.get(key) or 0 for p in passes.values()) for key in STALLS},
    }


def main() -> None:
    import torch

    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=CUB_FULL if gpu else 120, help="CUB images")
    parser.add_argument("--ade-train", type=int, default=ADE_FULL[0] if gpu else 40)
    parser.add_argument("--ade-val", type=int, default=ADE_FULL[1] if gpu else 10)
    parser.add_argument("--batch-size", type=int, default=256 if gpu else 32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers [default: cores]")
    parser.add_argument("--work-dir", type=Path, help="scratch folder [default: a temporary one]")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    # A lent card's call runs at most 10 minutes: the steps can be split over calls.
    parser.add_argument("--skip-cub", action="store_true", help="no CUB step (nor --cold-again-with-cache)")
    parser.add_argument("--skip-ade", action="store_true", help="no ADE20K-Part step")
    parser.add_argument(
        "--skip-ade-full",
        action="store_true",
        help="of ADE20K-Part, only the --ade-study-limit step (its tree holds only those images)",
    )
    parser.add_argument(
        "--ade-study-limit",
        type=int,
        default=0,
        metavar="N",
        help="then ADE20K-Part part-seg at the study's 512 px windows (-o protocol=study) on the first "
        "N images of each split [default: not run]",
    )
    parser.add_argument(
        "--cold-again-with-cache",
        type=Path,
        metavar="DIR",
        help="afterwards, run the cold CUB step again with the feature cache in DIR (say, a folder "
        "of /dev/shm: if the pass then keeps the device busier, the disk was what held it back)",
    )
    args = parser.parse_args()
    if args.skip_ade_full and not args.ade_study_limit:
        parser.error("--skip-ade-full leaves only the --ade-study-limit step: give it")
    if args.skip_ade_full:
        args.ade_train = min(args.ade_train, args.ade_study_limit)
        args.ade_val = min(args.ade_val, args.ade_study_limit)

    scratch = args.work_dir or Path(tempfile.mkdtemp(prefix="partbench-study-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    sizes = [] if args.skip_cub else [f"{args.images} CUB images"]
    sizes += [] if args.skip_ade else [f"ADE20K-Part {args.ade_train} + {args.ade_val}"]
    print(f"study scale on {card}: {', '.join(sizes) or 'no step'}")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        cub = None if args.skip_cub else build_cub(scratch / "CUB_200_2011", args.images, pool)
        ade = (
            None
            if args.skip_ade
            else build_ade_part(scratch / "ade20k-part", args.ade_train, args.ade_val, pool)
        )
    ckpt = build_checkpoint(scratch / "mae_pretrain_vit_base.pth")
    print(f"built the data and the checkpoint in {time.perf_counter() - t0:.0f} s")

    env = {**os.environ, "PARTBENCH_HOME": str(scratch / "home"), "PYTHONUNBUFFERED": "1"}
    db = f"sqlite:///{scratch / 'runs.db'}"
    common = ["--encoder", "mae", "--weights", str(ckpt), "--batch-size", str(args.batch_size), "--db", db]
    if args.workers is not None:
        common += ["--workers", str(args.workers)]
    steps: list[dict] = []
    seen = 0

    def step(name: str, run_args: list[str], run_env: dict[str, str] = env) -> None:
        nonlocal seen
        planned = forecast(run_args, run_env)
        # The forecast's bytes are every entry the run adds to the cache, cut entries (a split
        # taken from a pass over all images) included; the passes' own timing counts only what
        # their writers wrote. So the cache folder is weighed before and after.
        cache = Path(run_env.get("PARTBENCH_CACHE") or Path(run_env["PARTBENCH_HOME"]) / "cache")
        before = size_of(cache)
        proc = partbench(["run", *run_args], run_env)
        grown = (size_of(cache) - before) / 2**20
        runs = stored_runs(db, env)
        steps.append(summarise(name, proc, runs[seen:]) | {"plan": planned, "cache_grew_mb": grown})
        seen = len(runs)
        print(json.dumps(steps[-1]), flush=True)

    cub_args = [*common, "--dataset", "cub200", "--data-root", str(cub)]
    study_part = ["--task", "part-retrieval", "--task", "part-linear", "--task", "part-attentive"]
    if cub is not None:
        step("CUB part tasks, cold", [*cub_args, *study_part])
        warm = [*cub_args, "--task", "part-retrieval", "-o", "include_self=false"]
        step("CUB second part task, warm", warm)
    if ade is not None:
        ade_args = [*common, "--dataset", "ade20k-part", "--data-root", str(ade), "--task", "part-seg"]
        if not args.skip_ade_full:
            step("ADE20K-Part part-seg", ade_args)
        if args.ade_study_limit:
            # The study's 512 px windows on the first N images of each split: per image, the
            # figures of the full size at the study's resolution (fit and score grow linearly
            # with images: benchmarks/seg_scale.py).
            limited = ["--limit", str(args.ade_study_limit), "-o", "protocol=study"]
            step(f"ADE20K-Part part-seg, 512 px windows, {args.ade_study_limit} images a split",
                 [*ade_args, *limited])  # fmt: skip
    if args.cold_again_with_cache and cub is not None:
        cache = args.cold_again_with_cache / "partbench-study-scale-cache"
        again = {**env, "PARTBENCH_CACHE": str(cache)}
        step(f"CUB part tasks, cold, cache in {args.cold_again_with_cache}",
             [*cub_args, *study_part, "--force"], again)  # fmt: skip
        shutil.rmtree(cache, ignore_errors=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"partbench at study scale · {card}", title_justify="left")
    cols = ("step", "wall s", "passes", "img/s e2e", "img/s fwd", "busy", "scoring s", "host GiB", "GPU GiB")
    for c in cols:
        table.add_column(c, justify="left" if c == "step" else "right")

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    for s in steps:
        table.add_row(
            s["step"], f(s["wall_seconds"], ".0f"), str(s["encoder_passes"]),
            f(s["end_to_end_images_per_second"], ".0f"), f(s["forward_images_per_second"], ".0f"),
            f(s["device_busy_share"], ".0%"), f(s["scoring_seconds"], ".1f"),
            f(s["peak_host_gib"], ".1f"), f(s["peak_gpu_gib"], ".1f"),
        )  # fmt: skip
    Console(width=120).print(table)
    stalls = Table(title="where the extraction's time went besides the forward", title_justify="left")
    for c in ("step", "extraction s", "waiting for decoding s", "waiting for the device s",
              "waiting for the writer s", "device-to-host s", "writing s", "written GiB",
              "write GB/s"):  # fmt: skip
        stalls.add_column(c, justify="left" if c == "step" else "right")
    for s in steps:
        rate = s["written_mb"] * 2**20 / 1e9 / s["write_seconds"] if s["write_seconds"] else None
        stalls.add_row(
            s["step"], f(s["extraction_seconds"], ".0f"), f(s["loader_wait_seconds"], ".1f"),
            f(s["device_wait_seconds"], ".1f"), f(s["writer_wait_seconds"], ".1f"),
            f(s["device_to_host_seconds"], ".1f"),
            f(s["write_seconds"], ".1f"), f(s["written_mb"] / 1024, ".1f"), f(rate, ".2f"),
        )  # fmt: skip
    Console(width=140).print(stalls)
    planned = Table(title="the plan (--dry-run, before each step) against the run", title_justify="left")
    planned.add_column("step")
    for c in ("passes", "cache GiB", "extraction s", "host GiB", "GPU GiB"):
        planned.add_column(c + " plan / run", justify="right")

    def pair(s: dict, key: str, fmt: str, scale: int = 1, measured: str = "") -> str:
        plan, run = s["plan"].get(key), s[measured or key]
        if scale != 1:
            plan, run = (None if plan is None else plan / scale), run / scale
        return f"{f(plan, fmt)} / {f(run, fmt)}"

    for s in steps:
        if "error" in s["plan"]:
            planned.add_row(s["step"], f"dry run failed: {s['plan']['error'].strip().splitlines()[-1]}")
            continue
        planned.add_row(
            s["step"], pair(s, "encoder_passes", "d"), pair(s, "written_mb", ".2f", 1024, "cache_grew_mb"),
            pair(s, "extraction_seconds", ".0f"), pair(s, "peak_host_gib", ".1f"),
            pair(s, "peak_gpu_gib", ".1f"),
        )  # fmt: skip
    Console(width=140).print(planned)
    for s in steps:
        print(f"{s['step']}: {'; '.join(s['runs'])}; mapped cache peak {s['peak_mapped_cache_gib']:.1f} GiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"card": card, "torch": torch.__version__, "steps": steps}, indent=2))


if __name__ == "__main__":
    main()
