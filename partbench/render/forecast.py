"""``partbench run --dry-run`` as text: per dataset and encoder, what the store answers, each
pass with its bytes, memory and time, and the totals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from partbench.render.formatting import size_text


def forecast_text(forecasts: Sequence[Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for f in forecasts:
        lines.append(
            f"dataset {f['dataset']} on {f['device']}, {f['precision']}, batch {f['batch_size']}"
            + (f", limit {f['limit']}" if f["limit"] is not None else "")
            + f"; cache {f['cache'] or 'none (--no-cache)'}"
        )
        if f.get("data_bytes"):
            lines.append(
                f"  data: {f['dataset']} is drawn before the first pass and kept for later commands:"
                f" writes {size_text(f['data_bytes'])} to the cache"
            )
        for enc in f["encoders"]:
            lines.append(f"  encoder {enc['encoder']} ({enc['weights_id']}; loaded {enc['loaded']})")
            for r in enc["runs"]:
                if r["stored_run"] is not None:
                    what = f"stored as run {r['stored_run']}" + (
                        ", runs again (--force)" if r["will_run"] else ": skipped"
                    )
                else:
                    what = "to run"
                    if r["declared_covered_by"]:
                        ids = ", ".join(map(str, r["declared_covered_by"]))
                        what += f" (run(s) {ids} declare the same settings; their weights or data differ)"
                lines.append(f"    {r['task']}: {what}")
            for p in enc["passes"]:
                head = f"    pass {p['split']} {p['inputs']} ({p['transform']}): {p['action']}"
                if p["action"] == "cached":
                    lines.append(f"{head}, {', '.join(p['outputs'])} held in entry {p['entry']}")
                    continue
                if "items" not in p:  # encoded by an earlier forecast's pass (partbench.study)
                    lines.append(f"{head}: {', '.join(p['outputs'])}")
                    continue
                counted = "" if p["counted"] == "exact" else f" ({p['counted']})"
                lines.append(
                    f"{head}, {p['samples']} samples, {p['items']} {p['inputs']}{counted}; "
                    f"outputs {', '.join(p['outputs'] + p['masks'])}; writes {size_text(p['bytes'])}"
                )
                memory = p.get("memory")
                if memory:
                    text = f"host ~{size_text(memory['host_mb'] * 2**20)}"
                    if "device_mb" in memory:
                        text += f", device ~{size_text(memory['device_mb'] * 2**20)}"
                    seconds = p.get("seconds")
                    where = f"on {p['timed_on']}" if p.get("timed_on") else "here"
                    timed = (
                        f"; ~{_seconds(seconds)} (as run {p['timed_by_run']} was timed {where})"
                        if seconds is not None
                        else "; time: not timed on this device before"
                    )
                    lines.append(f"      peak memory {text}{timed}")
                if p.get("damaged_entry"):
                    lines.append(f"      cache entry damaged ({p['damaged_entry']}): the run sets it aside")
            if enc["passes"]:
                total = f"  total: writes {size_text(enc['bytes'])} to the cache"
                total += f"; scoring holds up to ~{size_text(enc['scoring_host_mb'] * 2**20)} of features"
                if enc["seconds"] is not None:
                    total += f"; encoding ~{_seconds(enc['seconds'])}"
                lines.append(total)
            else:
                lines.append("  nothing to run")
    lines.append("Dry run: nothing was run, stored or cached.")
    return "\n".join(lines)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
