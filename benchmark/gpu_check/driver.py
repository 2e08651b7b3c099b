"""Runs the GPU check's steps in order, each in its own process within a time budget, and after every step rewrites
what goes back from the device machine: ``summary.md``, ``results.tar.gz`` (``bench_results/<model>/<env tag>/``
and the other steps' JSON), ``steps.json``; the log, ``gpu_check.log``, grows as the steps run. At most 5 files under
``out`` (the 8 the device tool returns, with room to spare).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmark.gpu_check.carry import measure
from benchmark.gpu_check.plan import PLANS, STEP_ORDER, Plan
from benchmark.gpu_check.steps import loader_commands

log = logging.getLogger(__name__)
LOG_NAME = "gpu_check.log"
#: Seconds kept back from the budget for the summary and the archive.
_RESERVE_S = 5.0


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | cut (stopped at its budget) | skipped
    seconds: float
    note: str = ""


def _python() -> list[str]:
    return [sys.executable, *(["-S"] if sys.flags.no_site else [])]


def step_commands(name: str, plan: Plan, work: Path) -> list[list[str]]:
    if name == "loader":
        return loader_commands(plan, work)
    return [[*_python(), "-m", "benchmark.gpu_check.cli", "step", name, "--plan", plan.mode, "--work", str(work)]]


def _run(command: list[str], timeout: float, log_file) -> tuple[int | None, float]:
    """(exit code or None when stopped at ``timeout``, seconds); a stopped command's whole process group goes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        code = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    return code, time.perf_counter() - t0


def run_check(mode: str, out: Path, work: Path, root: Path) -> int:
    """The whole check; returns the exit code (0 when every step finished)."""
    from benchmark.gpu_check.summary import write_summary

    plan = PLANS[mode]
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    carry = measure(root)
    deadline = time.monotonic() + plan.budget_s
    results: list[StepResult] = []
    log_path = out / LOG_NAME
    for name, _ in STEP_ORDER:
        if plan.mode == "rehearse" and any(r.status != "ok" for r in results):
            results.append(StepResult(name, "skipped", 0.0, "an earlier step failed (the rehearsal stops there)"))
            continue
        left = deadline - time.monotonic() - _RESERVE_S
        cap = min(plan.step_caps_s.get(name, 60.0), left)
        if cap < 3:
            results.append(StepResult(name, "skipped", 0.0, f"time: {plan.budget_s:g} s budget spent"))
            continue
        if name.startswith("model:") and not (work / "store.zarr").exists() or (
                name == "loader" and not (work / "store.zarr").exists()):
            results.append(StepResult(name, "skipped", 0.0, "no store (the store step failed)"))
            continue
        log.info("step %s (budget %.0f s)", name, cap)
        status, spent, notes = "ok", 0.0, []
        for command in step_commands(name, plan, work):
            with log_path.open("a") as f:
                f.write(f"\n=== {name}: {' '.join(command[-14:])}\n")
                f.flush()
                code, seconds = _run(command, cap - spent, f)
            spent += seconds
            if code is None:
                status = "cut"
                notes.append(f"stopped at its {cap:.0f} s budget")
                break
            if code != 0:
                status = "failed"
                notes.append(f"exit {code} (see {LOG_NAME})")
        results.append(StepResult(name, status, spent, "; ".join(notes)))
        log.info("step %s: %s in %.1f s %s", name, status, spent, "; ".join(notes))
        _write_outputs(out, work, plan, carry, results, write_summary)
    _write_outputs(out, work, plan, carry, results, write_summary)
    failed = [r.name for r in results if r.status != "ok"]
    if failed:
        log.error("gpu check (%s): not ok: %s", mode, ", ".join(failed))
    return 1 if failed else 0


def _write_outputs(out: Path, work: Path, plan: Plan, carry, results: list[StepResult], write_summary) -> None:
    steps = [asdict(r) for r in results]
    _replace(out / "steps.json", json.dumps({"mode": plan.mode, "carry": carry.as_dict(), "steps": steps},
                                            indent=1).encode())
    _replace(out / "summary.md", write_summary(work, plan, carry.line(), steps).encode())
    partial = out / "results.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as tar:
        if (work / "bench_results").exists():
            tar.add(work / "bench_results", arcname="bench_results")
    partial.replace(out / "results.tar.gz")


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)
