"""timm's own benchmark as the peer of partbench's extraction, on one model, batch and precision.

    python benchmarks/timm_peer.py --timm-source ~/src/pytorch-image-models
    python benchmarks/timm_peer.py --timm-source DIR --model vit_base_patch16_224 --batch-size 8
    python benchmarks/timm_peer.py --timm-source DIR --device cuda --precision bf16 --batch-size 256

timm's ``benchmark.py`` (inference mode) is in timm's source repository, not in its wheel: it
is run from the checkout given, never copied into partbench. One after the other, in this
machine state, the script measures:

1. timm: ``benchmark.py --bench inference`` on the model with random weights (timm's
   benchmark builds models without pretrained weights) -> ``infer_samples_per_sec``;
2. partbench forward: the same model as partbench wraps it (``TimmEncoder``, classifier
   removed), called as the extraction calls it: on a batch normalised from uint8 H x W x 3
   pixels, under ``torch.inference_mode`` and the precision's autocast, reading the outputs of
   a part-crop pass (no stage maps), timed per batch after warm-up;
3. the plain timm forward (``model(x)`` on a contiguous batch) in the same process as 2,
   alternated batch by batch with it, so that a gap between 1 and 2 can be told apart into
   what the wrapper costs (2 against 3) and how the machine moved (1 against 3). Steps 2 and
   3 run in a fresh process of their own, as benchmark.py always does, so that neither side
   carries what an earlier round left in its process;
4. partbench end to end: ``partbench run -t part-retrieval`` on a CUB-200-2011 tree in the
   official layout (benchmarks/study_scale.py builds it; synthetic pixels), the model's random
   weights passed as ``--weights``: the pass's decode, crop, forward and cache write per second,
   with the forward share as the pass timed it.

Steps 1 to 3 repeat ``--rounds`` times, each round's ratios taken against that round's timm
figure: on a virtual 2-core machine one round moved by 10-15% with nothing changed, more than
the gap being measured (ViT-S/16 ratios 0.87-1.12 in three rounds, idle). It prints each
round, the median ratio of the rounds with their range, and the machine's load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

FORWARDS = ("partbench_forward", "timm_forward_in_process")  # measured in one fresh process a round
PRECISIONS = {"fp32": ("float32", None), "bf16": ("float32", "bfloat16")}  # timm's --precision, --amp-dtype


def timm_rate(
    source: Path, model: str, batch: int, precision: str, warm: int, iters: int, device: str
) -> float:
    """infer_samples_per_sec of timm's benchmark.py, run from the checkout as its own process."""
    # Absolute: benchmark.py runs in a scratch folder, where a relative checkout (.timm) is not.
    script = (source / "benchmark.py").resolve()
    if not script.is_file():
        raise SystemExit(f"{script}: no benchmark.py there; --timm-source is a timm source checkout")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        prec, amp = PRECISIONS[precision]
        cmd = [
            sys.executable, str(script), "--bench", "inference", "--model", model, "-b", str(batch),
            "--device", device, "--num-warm-iter", str(warm), "--num-bench-iter", str(iters),
            "--precision", prec, "--results-file", str(out), "--results-format", "json",
        ]  # fmt: skip
        if amp:
            cmd += ["--amp", "--amp-dtype", amp]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0 or not out.is_file():
            raise SystemExit(f"timm's benchmark.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
        result = json.loads(out.read_text())
        result = result[0] if isinstance(result, list) else result
        return float(result["infer_samples_per_sec"])


def forward_rates(
    model_name: str, batch: int, precision: str, warm: int, iters: int, device: str
) -> dict[str, float]:
    """partbench's forward as the extraction calls it, and timm's plain forward, in this process
    (``--forwards-only`` runs it as a process of its own: fresh_forward_rates)."""
    import timm
    import torch

    from partbench.encoders.timm_adapter import TimmEncoder

    on = torch.device(device)
    if on.type == "cuda":
        # fp32 as partbench runs it on a GPU (TF32 matmuls), and as benchmark.py sets at import.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=0).eval().to(on)
    encoder = TimmEncoder(model, name=f"timm:{model_name}", family="unknown", weights_id="random-init:seed=0")
    size = encoder.input_size
    pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=on)
    mean = torch.tensor(encoder.mean, device=on).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=on).view(1, 3, 1, 1)
    # As extraction.stream._BatchEncoder._inputs prepares a batch: uint8 H x W x 3, permuted, normalised.
    x = (pixels.permute(0, 3, 1, 2).float().div_(255) - mean) / std
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def context():
        return torch.autocast(on.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def finished() -> None:  # a CUDA forward returns before the device is done
        if on.type == "cuda":
            torch.cuda.synchronize(on)

    def partbench_step():
        with torch.inference_mode(), context():
            encoder.forward(x, stages=())

    plain = torch.randn(batch, 3, size, size, device=on)

    def timm_step():
        with torch.inference_mode(), context():
            model(plain)

    # Alternated batch by batch, so that both see the same machine: on a shared machine the
    # load moves more between two runs of a minute than the wrapper costs.
    seconds: dict[str, list[float]] = {"partbench_forward": [], "timm_forward_in_process": []}
    steps = {"partbench_forward": partbench_step, "timm_forward_in_process": timm_step}
    for _ in range(warm):
        partbench_step()
        timm_step()
    finished()
    for _ in range(iters):
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            finished()
            seconds[key].append(time.perf_counter() - t0)
    return {key: batch * iters / sum(v) for key, v in seconds.items()}


def fresh_forward_rates(
    model: str, batch: int, precision: str, warm: int, iters: int, device: str
) -> dict[str, float]:
    """forward_rates in a new process of this script, as timm's benchmark.py runs in one."""
    cmd = [
        sys.executable, __file__, "--forwards-only", "--model", model,
        "--batch-size", str(batch), "--precision", precision, "--warm", str(warm), "--iters", str(iters),
        "--device", device,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the forwards' process failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_to_end(
    model_name: str, batch: int, precision: str, images: int, scratch: Path, device: str
) -> dict[str, float]:
    """One part-retrieval run through the CLI; its pass's rates as the run stored them."""
    import timm
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from study_scale import build_cub

    with ProcessPoolExecutor(os.cpu_count()) as pool:
        cub = build_cub(scratch / "CUB_200_2011", images, pool)
    weights = scratch / f"{model_name}.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model(model_name, pretrained=False, num_classes=0).state_dict(), weights)
    env = {**os.environ, "PARTBENCH_HOME": str(scratch / "home")}
    db = f"sqlite:///{scratch / 'runs.db'}"
    cmd = [
        sys.executable, "-m", "partbench", "run", "-e", f"timm:{model_name}", "--weights", str(weights),
        "-t", "part-retrieval", "--dataset", "cub200", "--data-root", str(cub), "--batch-size", str(batch),
        "--precision", precision, "--device", device, "--db", db, "--force",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"partbench run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    listed = subprocess.run(
        [sys.executable, "-m", "partbench", "runs", "--format", "json", "--db", db],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    passes = (json.loads(listed.stdout)[-1]["timing"] or {}).get("passes") or {}
    if len(passes) != 1:
        raise SystemExit(f"expected one encoder pass, the run stored {len(passes)}")
    (p,) = passes.values()
    return {
        "partbench_pass_forward": p["images_per_second"],
        "partbench_end_to_end": p["images"] / p["wall_seconds"],
        "pass_images": p["images"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm-source", type=Path, help="a timm source checkout (required)")
    parser.add_argument("--model", action="append", help="timm model [default: ViT-S/16 and ViT-B/16]")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (benchmark.py's --device) [default: cpu]"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--warm", type=int, default=3, help="warm-up batches")
    # Batches, not seconds: at 5 batches of 8 ViT-S/16 images (2 s a side on a 2-core CPU)
    # five rounds spread 0.78-1.36x; at 25 they spread 0.90-1.09x.
    parser.add_argument("--iters", type=int, default=20, help="timed batches")
    parser.add_argument("--rounds", type=int, default=3, help="timm's benchmark and the forwards, repeated")
    parser.add_argument("--images", type=int, default=40, help="CUB images for the end-to-end run")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--forwards-only", action="store_true", help=argparse.SUPPRESS)  # one round's 2 and 3
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.iters < 5:  # timm's benchmark.py logs every iters // 5 batches and fails below 5
        parser.error("--iters must be at least 5")
    if args.forwards_only:  # fresh_forward_rates's process: --model once, no checkout needed
        rates = forward_rates(
            args.model[0], args.batch_size, args.precision, args.warm, args.iters, args.device
        )
        print(json.dumps(rates))
        return
    if args.timm_source is None:
        parser.error("--timm-source is required: a timm source checkout holding benchmark.py")
    import torch

    models = args.model or ["vit_small_patch16_224", "vit_base_patch16_224"]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name(torch.device(args.device))}; {machine}"
    print(f"{machine}; {torch.get_num_threads()} threads; batch {args.batch_size}; {args.precision}")
    rows = []
    for model in models:
        load_before = os.getloadavg()[0]
        row: dict = {"model": model, "load_before": load_before, "rounds": []}
        for i in range(args.rounds):
            same = (model, args.batch_size, args.precision, args.warm, args.iters, args.device)
            one = {"timm": timm_rate(args.timm_source, *same), **fresh_forward_rates(*same)}
            for key in FORWARDS:
                one[f"{key}_ratio"] = one[key] / one["timm"]
            row["rounds"].append(one)
            print(f"{model} round {i + 1}: {json.dumps(one)}", flush=True)
        for key in ("timm", *FORWARDS, *(f"{k}_ratio" for k in FORWARDS)):
            row[key] = statistics.median(r[key] for r in row["rounds"])
        if not args.skip_end_to_end:
            with tempfile.TemporaryDirectory(prefix="partbench-timm-peer-") as tmp:
                row.update(
                    end_to_end(model, args.batch_size, args.precision, args.images, Path(tmp), args.device)
                )
            for key in ("partbench_pass_forward", "partbench_end_to_end"):
                row[f"{key}_ratio"] = row[key] / row["timm"]
        row["load_after"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
    print()
    print(f"Medians of {args.rounds} rounds, each ratio against its round's benchmark.py (range beside it).")
    print("| model | load 1-min | timm img/s | partbench forward (x timm) | timm forward here (x timm) "
          "| pass forward (x timm) | end to end (x timm) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")

    def cell(r: dict, key: str) -> str:
        v = r.get(key)
        if v is None:
            return "–"
        text = f"{v:.2f} ({r[key + '_ratio']:.2f}x"
        if key in FORWARDS and len(r["rounds"]) > 1:
            ratios = [one[key + "_ratio"] for one in r["rounds"]]
            text += f", {min(ratios):.2f}-{max(ratios):.2f}"
        return text + ")"

    for r in rows:
        print(
            f"| {r['model']} | {r['load_before']:.1f}-{r['load_after']:.1f} | {r['timm']:.2f} | "
            f"{cell(r, 'partbench_forward')} | {cell(r, 'timm_forward_in_process')} | "
            f"{cell(r, 'partbench_pass_forward')} | {cell(r, 'partbench_end_to_end')} |"
        )
    ratio = statistics.fmean(r["partbench_forward_ratio"] for r in rows)
    print(f"\npartbench forward / timm benchmark.py, mean over models: {ratio:.2f}x (target >= 0.95x)")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
