"""``summary.md``: one page of what the GPU check measured, each figure labelled device-resident or end to end,
with the anchors beside them. Built from the JSON the steps wrote; a step that did not finish shows what it left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark.gpu_check.plan import ANCHORS, SKIPPED, Plan, rehearsal_note


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["(nothing measured)"]
    cells = [[_fmt(c) for c in r] for r in rows]
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |"
                                                                              for r in cells]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value).replace("|", "/")


def _tag_dirs(results: Path, model: str) -> list[Path]:
    return sorted(p for p in (results / model).glob("*") if p.is_dir())


def _inference(results: Path, plan: Plan) -> list[str]:
    lines, rows = [], []
    for model in plan.backends:
        for tag in _tag_dirs(results, model):
            done = _jsonl(tag / "results.jsonl")
            source = done or _jsonl(tag / "points.jsonl")
            for r in source:
                ok = r.get("status") == "ok"
                rows.append([model, r.get("backend"), r.get("precision"), r.get("batch_size"),
                             r.get("throughput_ips") if ok else None, r.get("latency_p50_ms") if ok else None,
                             r.get("peak_mem_mb") if ok else None, r.get("ceiling_fraction"),
                             r.get("status") if ok else f"{r.get('status')}: {r.get('reason', '')}"[:90],
                             "results.jsonl" if done else "cut short: points.jsonl"])
        note = rehearsal_note(model, plan)
        if note:
            lines.append(f"- {model}: {note}.")
    headers = ["model", "backend", "precision", "batch", "img/s", "p50 ms", "peak MB", "of ceiling", "status", "from"]
    return _table(headers, rows) + [""] + lines


def _training(results: Path, plan: Plan) -> list[str]:
    rows = []
    for model in plan.backends:
        for tag in _tag_dirs(results, model):
            t = _load(tag / "training.json") or {}
            for e in t.get("epochs", []):
                rows.append([model, e.get("epoch"), t.get("batch_size"), e.get("items_per_s"), e.get("peak_gpu_mb"),
                             e.get("epoch_seconds")])
    return _table(["model", "epoch", "batch", "train img/s", "peak MB (torch)", "epoch s"], rows)


def _loader(results: Path) -> list[str]:
    rows = []
    for path in sorted((results / "loader").glob("*.json")):
        data = _load(path) or {}
        for r in data.get("rows", []):
            measured = "device-resident" if r.get("loader") == "device" else "end to end"
            rows.append([data.get("model"), data.get("precision") or "fp32", r.get("loader"), measured,
                         r.get("loader_images_per_s"), r.get("synthetic_images_per_s"), r.get("efficiency")])
    return _table(["model", "precision", "loader", "measured", "fed img/s", "device-resident tensors img/s",
                   "efficiency"], rows)


def _tiling(results: Path) -> list[str]:
    data = _load(results / "tiling" / "cucim.json") or {}
    rows = [[r.get("method"), r.get("measured"), r.get("tiles"), r.get("seconds"), r.get("tiles_per_s"),
             r.get("status", "ok") + (f": {r['reason']}" if r.get("reason") else "")] for r in data.get("rows", [])]
    head = [f"Slide: {data['slide']}; {data.get('read_workers')} read workers."] if data else []
    return head + _table(["method", "measured", "tiles", "s", "tiles/s", "status"], rows)


def write_summary(work: Path, plan: Plan, carry_line: str, steps: list[dict]) -> str:
    """The summary's Markdown text."""
    results = work / "bench_results"
    ceil = _load(results / "gpu_check" / "ceilings.json") or {}
    env = ceil.get("environment", {})
    title = "GPU check" if plan.mode == "device" else "GPU check REHEARSAL (CPU, tiny sizes: not figures)"
    lines = [f"# {title}: {ceil.get('env_tag', 'environment step did not finish')}", "",
             f"{env.get('gpu') or env.get('cpu') or '?'}, driver {env.get('driver')}, torch {env.get('torch')}, "
             f"CUDA {env.get('cuda')}, timm {env.get('timm')}, git {env.get('git_sha')}, {env.get('time')}.",
             f"{carry_line}.", "",
             *_table(["step", "status", "s", "note"], [[s["name"], s["status"], s["seconds"], s["note"]]
                                                        for s in steps]), "",
             "## Ceilings (device-resident)", ""]
    if ceil:
        lines.append(f"matmul {ceil['matmul_dtype']}: {ceil['matmul_tflops']:.1f} TFLOP/s; device copy "
                     f"{ceil['copy_gb_s']:.0f} GB/s ({ceil['copy_note']}); DeiT-S ceiling at 9.2 GFLOP/img: "
                     f"{ceil['deit_s_ceiling_ips']:,.0f} img/s.")
    lines += ["", "## Inference: histo-bench run (device-resident input)", "", *_inference(results, plan), "",
              "## Training: the one engine, bf16, device-resident loader (device-resident)", "",
              *_training(results, plan), "",
              "## Input pipeline: histo-bench loader-bench (training steps fed by a loader)", "", *_loader(results), "",
              "## Tiling: cuCIM", "", *_tiling(results), "",
              "## Anchors", "", *[f"- {a}" for a in ANCHORS], "",
              "## Skipped", "", *[f"- {k}: {v}." for k, v in SKIPPED.items()], "",
              "Accuracy columns (in results.jsonl) come from a checkpoint trained for a few steps on synthetic data: "
              "near chance by design, not a figure."]
    return "\n".join(lines) + "\n"
