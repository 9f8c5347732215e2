"""timm_peer.py's two halves without timm's checkout: the command it gives benchmark.py (here a
stand-in that writes a result), and partbench's forward measured in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from timm_peer import fresh_forward_rates, timm_rate

# Writes a result where benchmark.py writes its own, in the same format.
STAND_IN = textwrap.dedent(
    """
    import json, sys
    args = sys.argv[1:]
    out = args[args.index("--results-file") + 1]
    json.dump([{"model": args[args.index("--model") + 1], "infer_samples_per_sec": 123.5}], open(out, "w"))
    """
)


@pytest.mark.parametrize(
    ("precision", "device", "amp"), [("fp32", "cpu", None), ("bf16", "cuda", "bfloat16")]
)
def test_benchmark_py_is_given_the_model_batch_precision_and_device(
    tmp_path, monkeypatch, precision, device, amp
):
    (tmp_path / "benchmark.py").write_text(STAND_IN)
    seen: list[list[str]] = []
    real = subprocess.run

    def recording(cmd, **kwargs):
        seen.append(cmd)
        return real(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording)
    assert timm_rate(tmp_path, "vit_tiny_patch16_224", 4, precision, 2, 5, device) == 123.5
    (cmd,) = seen

    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert value("--model") == "vit_tiny_patch16_224" and value("-b") == "4"
    assert value("--device") == device and value("--precision") == "float32"
    assert value("--num-warm-iter") == "2" and value("--num-bench-iter") == "5"
    assert ("--amp" in cmd) == (amp is not None)
    if amp:
        assert value("--amp-dtype") == amp


def test_a_checkout_given_relative_to_the_working_folder_is_found(tmp_path, monkeypatch):
    # gpu_check.sh passes TIMM_SOURCE=.timm; benchmark.py itself runs in a scratch folder.
    (tmp_path / ".timm").mkdir()
    (tmp_path / ".timm" / "benchmark.py").write_text(STAND_IN)
    monkeypatch.chdir(tmp_path)
    assert timm_rate(Path(".timm"), "vit_tiny_patch16_224", 4, "fp32", 2, 5, "cpu") == 123.5


def test_a_missing_checkout_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"no benchmark\.py there"):
        timm_rate(tmp_path, "vit_tiny_patch16_224", 1, "fp32", 1, 5, "cpu")


def test_the_forwards_are_measured_in_a_process_of_their_own():
    rates = fresh_forward_rates("vit_tiny_patch16_224", 1, "fp32", 1, 5, "cpu")
    assert set(rates) == {"partbench_forward", "timm_forward_in_process"}
    assert all(rate > 0 for rate in rates.values())


def test_the_checkout_is_required_to_compare():
    script = Path(__file__).with_name("timm_peer.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 2 and "--timm-source is required" in done.stderr
