"""Train a recipe and ship its weights inside the package, recorded in the manifest.

    python -m partbench.pretrain.ship --method dino          # the shipped settings
    python -m partbench.pretrain.ship --method all

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
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST = "manifest.json"

# The shipped settings: each run takes about 6-7 minutes with two threads on an otherwise idle
# two-core machine (a busy core makes OpenMP threads wait on each other; run alone).
SHIPPED: dict[str, dict[str, int]] = {
    "supervised": {"steps": 700, "batch_size": 64},
    "mocov3": {"steps": 450, "batch_size": 64},
    "dino": {"steps": 600, "batch_size": 32},
    "mae": {"steps": 1200, "batch_size": 128},
    "ibot": {"steps": 440, "batch_size": 32},
}
THREADS = 2
IMAGES = 4096


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
    import timm
    import torch

    from partbench.encoders.checkpoints import sha256_file
    from partbench.pretrain.train import make_recipe, pretrain

    settings = SHIPPED[method]
    steps = steps or settings["steps"]
    batch_size = batch_size or settings["batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        result = pretrain(
            method,
            steps=steps,
            seed=seed,
            out_dir=Path(tmp),
            batch_size=batch_size,
            progress=progress,
            threads=threads,
            images=IMAGES,
        )
        weights_dir.mkdir(parents=True, exist_ok=True)
        target = weights_dir / result.weights.name
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, choices=[*SHIPPED, "all"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    for method in SHIPPED if args.method == "all" else [args.method]:
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
            f"sha256 {entry['sha256'][:12]}"
        )


if __name__ == "__main__":
    main()
