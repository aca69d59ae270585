"""One measurement in a fresh process, run with a given checkout's bioindex: how a
benchmark compares this code with a baseline checkout (`--baseline DIR`) in the same run.

A measuring script starts with PEAK, which defines `field(name)` (a /proc/self/status
figure in MB) and `reset_peak()` (VmHWM starts again from here), and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # this checkout
PEAK = r"""
import json, sys, time
def field(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
def reset_peak():
    open("/proc/self/clear_refs", "w").write("5")
    return field("VmRSS")
"""


def measure(script: str, args: list[str], code: Path | None, timeout: float,
            memory_gb: float | None = None) -> dict:  # fmt: skip
    """`script`'s JSON line, run with `code`'s bioindex (this checkout's when None) first on
    the path — `python -c` puts its working folder first, so it runs there — under a cap
    on its address space, if given; or {"error": …}."""
    code = code or HERE
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def cap() -> None:
        if memory_gb:
            limit = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, env=env, timeout=timeout, preexec_fn=cap, cwd=code)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        if "MemoryError" in done.stderr or "bad_alloc" in done.stderr:
            return {"error": "out of memory"}
        last = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return {"error": f"exit {done.returncode}: {last[-1][:160] if last else ''}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def versus_baseline(results: list[dict], row: dict, case: tuple[str, ...]) -> str:
    """How many times faster `row` ran than the baseline's row of the same `case` (the
    keys naming it): "" for the baseline itself, or where either has no time."""
    base = next((b for b in results if b["code"] == "baseline"
                 and all(b[key] == row[key] for key in case)), None)  # fmt: skip
    if base is None or base is row or "seconds" not in base or "seconds" not in row:
        return ""
    return f"{base['seconds'] / row['seconds']:.1f}×"


def same_answers(row: dict) -> str:
    """The table's word for whether both checkouts answered alike ("" where not compared)."""
    return {True: "yes", False: "**no**"}.get(row.get("same_answers"), "")


def save(results: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


def against_baseline(parser: argparse.ArgumentParser, name: str) -> argparse.Namespace:
    """The arguments every store benchmark here shares (a baseline checkout, a timeout per
    measurement, where stores are made, where results go), parsed; `runs` added: this
    checkout, then the baseline's when one is given."""
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bioindex-heads"))
    parser.add_argument("--out", type=Path, default=Path(f"benchmarks/results/{name}.json"))
    args = parser.parse_args()
    args.runs = [("this", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    return args
