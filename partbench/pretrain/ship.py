"""Train a recipe and ship its weights inside the package, recorded in the manifest.

    python -m partbench.pretrain.ship --method dino          # the shipped settings
    python -m partbench.pretrain.ship --method all
    python -m partbench.pretrain.ship --method mocov3 --install RUN_DIR   # a run already trained

Each shipped file ``partbench/weights/mini-<method>.safetensors`` holds the backbone keys
exactly as ``build_mini_vit()`` names them and, for MoCo v3 / DINO / iBOT, the projection
head under ``head.``; its loss log ships beside it. ``manifest.json`` records per file the
sha256, recipe, seed, steps, final loss, training seconds, versions and the command that
reproduces it. Bit-identical reproduction needs the same torch build and thread count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partbench.pretrain.gate import rule
from partbench.render.formatting import difference_text

if TYPE_CHECKING:
    from partbench.pretrain.train import PretrainResult

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST = "manifest.json"

# The shipped settings. Training times are in the manifest (2-core CPU): the self-supervised
# recipes run as many steps as 20 minutes on two threads allowed on an AVX-512 CPU (16-19
# minutes; at their earlier lengths three of them were at chance on object retrieval); the
# supervised ViT took 37 (3,000 steps, one thread beside another job).
SHIPPED: dict[str, dict[str, int]] = {
    "supervised": {"steps": 3000, "batch_size": 64},
    "supervised-cnn": {"steps": 1500, "batch_size": 64},
    "mocov3": {"steps": 1600, "batch_size": 64},
    "dino": {"steps": 1300, "batch_size": 64},
    "mae": {"steps": 3300, "batch_size": 128},
    "ibot": {"steps": 950, "batch_size": 64},
}
THREADS = 2
IMAGES = 4096
# The pooled feature the gate reads: a CNN's is its average pool; MAE's class token is trained
# by nothing (its loss reads patch tokens only), so its gate reads the mean patch token.
GATE_FEATURE = {"mae": "mean-patch"}


class GateFailed(RuntimeError):
    """A trained file that did not beat its random initialisation; it is not installed."""


def check_gate(method: str, weights: Path, seed: int) -> dict[str, Any]:
    """Load ``weights``' backbone keys into the method's architecture and gate it against the
    same architecture at seed ``seed``'s initialisation (partbench.pretrain.gate)."""
    from safetensors.torch import load_file

    from partbench.encoders.mini import by_method
    from partbench.pretrain.gate import gate

    mini = by_method(method)
    backbone = mini.build(seed)
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("head.")}
    backbone.load_state_dict(state, strict=True)
    feature = "avgpool" if mini.arch == "cnn" else GATE_FEATURE.get(method, "cls")
    result = gate(backbone, mini.build(seed), feature, mini.serves).as_dict()
    return {"rule": rule(mini.serves), **result}


def read_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    path = weights_dir / MANIFEST
    if not path.is_file():
        return {"files": {}}
    return json.loads(path.read_text())


def ship(
    method: str,
    *,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    threads: int = THREADS,
    weights_dir: Path = WEIGHTS_DIR,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain ``method`` and install the result in ``weights_dir``; returns its manifest entry."""
    from partbench.pretrain.train import pretrain

    settings = SHIPPED[method]
    with tempfile.TemporaryDirectory() as tmp:
        result = pretrain(
            method,
            steps=steps or settings["steps"],
            seed=seed,
            out_dir=Path(tmp),
            batch_size=batch_size or settings["batch_size"],
            progress=progress,
            threads=threads,
            images=IMAGES,
        )
        return install(result, threads=threads, weights_dir=weights_dir)


def trained_run(method: str, run_dir: Path) -> tuple[PretrainResult, int]:
    """The run that ``partbench pretrain --method METHOD --out RUN_DIR`` left, read back from
    its loss log, with the thread count it trained on; refused unless it trained on the shipped
    pretraining data (its manifest command would not reproduce it otherwise)."""
    from partbench.pretrain.train import PretrainResult

    weights, log_path = run_dir / f"mini-{method}.safetensors", run_dir / f"mini-{method}.log.json"
    for path in (weights, log_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (train with partbench pretrain --method {method})")
    log = json.loads(log_path.read_text())
    for key, wanted in (("method", method), ("images", IMAGES), ("data_seed", 0)):
        if log.get(key) != wanted:
            raise ValueError(f"{log_path}: '{key}' is {log.get(key)!r}, shipping needs {wanted!r}")
    result = PretrainResult(
        method, weights, log_path, log["loss"], log["seconds"], log["steps"], log["seed"], log["batch_size"]
    )
    return result, int(log["threads"])


def install(result: PretrainResult, *, threads: int, weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    """Gate a trained run (a ``PretrainResult``) and, when it passes, copy its file and loss log
    into ``weights_dir`` and record them in the manifest; returns the manifest entry."""
    import timm
    import torch

    from partbench.encoders.checkpoints import sha256_file
    from partbench.pretrain.train import make_recipe

    method, steps, seed, batch_size = result.method, result.steps, result.seed, result.batch_size
    passed = check_gate(method, result.weights, seed)
    if not passed["passed"]:
        # Kept for a look (a probe, a longer gate): the training time is not thrown away.
        from partbench import paths

        rejected = paths.home() / "pretrain" / "rejected"
        rejected.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.weights, rejected / result.weights.name)
        shutil.copyfile(result.log, rejected / result.log.name)
        raise GateFailed(
            f"mini-{method} after {steps} steps: {passed['level']} kNN top-1 "
            f"{passed['knn_top1']:.1f} against {passed['floor_top1']:.1f} at initialisation "
            f"(difference {difference_text(passed['difference'], passed['low'], passed['high'])}); "
            f"not installed, kept in {rejected}"
        )
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / result.weights.name
    if result.weights.resolve() != target.resolve():
        shutil.copyfile(result.weights, target)
        shutil.copyfile(result.log, weights_dir / result.log.name)
    recipe = make_recipe(method, seed, 1)
    doc = (type(recipe).__doc__ or "").split("\n\n")[0]
    entry = {
        "file": target.name,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "method": method,
        "family": recipe.family,
        "head": recipe.head_kind,
        "recipe": " ".join(doc.split()),
        "hyper": {k: v for k, v in vars(recipe.hyper).items()},
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "images": IMAGES,
        "data": "SynParts seed 0, split 'pretrain', 96 px (disjoint from the benchmark's splits)",
        "first_loss": result.losses[0],
        "final_loss": result.final_loss,
        "loss_log": result.log.name,
        "training_seconds": round(result.seconds, 1),
        "gate": passed,
        "threads": threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "reproduce": (
            f"python -m partbench.pretrain.ship --method {method} --steps {steps} "
            f"--seed {seed} --batch-size {batch_size} --threads {threads}"
        ),
    }
    manifest = read_manifest(weights_dir)
    manifest["files"][target.name] = entry
    manifest["files"] = dict(sorted(manifest["files"].items()))
    (weights_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return entry


def regate(method: str, *, weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    """Gate an installed file again and record the result in its manifest entry (for files
    shipped before the gate existed); a failing file is recorded as failing, not removed."""
    manifest = read_manifest(weights_dir)
    name = f"mini-{method}.safetensors"
    if name not in manifest["files"]:
        raise KeyError(f"{weights_dir / MANIFEST}: no entry '{name}'")
    entry = manifest["files"][name]
    # Marked: such a file was installed without passing, and may have failed.
    result = check_gate(method, weights_dir / name, entry["seed"])
    entry["gate"] = {**result, "checked": "after shipping"}
    (weights_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, choices=[*SHIPPED, "all"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--gate-only", action="store_true", help="gate the installed file; train nothing")
    parser.add_argument(
        "--install",
        type=Path,
        metavar="RUN_DIR",
        help="gate and ship the file that partbench pretrain --out RUN_DIR trained; train nothing",
    )
    args = parser.parse_args(argv)
    if args.install is not None and args.method == "all":
        parser.error("--install takes one --method")
    for method in SHIPPED if args.method == "all" else [args.method]:
        if args.gate_only:
            gate = regate(method, weights_dir=args.weights_dir)["gate"]
            verdict = "passed" if gate["passed"] else "FAILED"
            print(
                f"mini-{method}: gate {verdict}, kNN {gate['knn_top1']:.1f} vs {gate['floor_top1']:.1f} "
                f"({difference_text(gate['difference'], gate['low'], gate['high'])})"
            )
            continue
        if args.install is not None:
            result, threads = trained_run(method, args.install)
            entry = install(result, threads=threads, weights_dir=args.weights_dir)
        else:
            entry = ship(
                method,
                steps=args.steps,
                seed=args.seed,
                batch_size=args.batch_size,
                threads=args.threads,
                weights_dir=args.weights_dir,
            )
        print(
            f"{entry['file']}: {entry['steps']} steps in {entry['training_seconds']} s, "
            f"loss {entry['first_loss']:.4f} -> {entry['final_loss']:.4f}, "
            f"gate kNN {entry['gate']['knn_top1']:.1f} vs {entry['gate']['floor_top1']:.1f}, "
            f"sha256 {entry['sha256'][:12]}"
        )


if __name__ == "__main__":
    main()
