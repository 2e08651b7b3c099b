"""The benchmark report: ``results.md`` (an efficiency table in the style of the DeiT/Swin study, the full sweep,
skipped backends with their reasons) and PNG plots, all from the result rows.

Plots: throughput vs batch size per backend, latency (p50 with the p90-p99 band) vs batch size, latency-throughput
scatter, and peak VRAM per batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histo_bench.markdown import markdown_table
from histo_bench.plotting import pyplot, save_figure

PLOTS: tuple[str, ...] = ("throughput_vs_batch.png", "latency_vs_batch.png", "latency_throughput.png",
                          "peak_vram.png")


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _variants(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["backend"], r["precision"]) for r in rows))


def _ok(rows, backend, precision) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r["backend"] == backend and r["precision"] == precision
                   and r["status"] == "ok"), key=lambda r: r["batch_size"])


def _mags(rows) -> list[str]:
    return list(dict.fromkeys(m for r in rows for m in (r["macro_f1"] or {})))


#: eager fp32 measured at the start and again at the end differing by more than this marks the run unsteady
DRIFT_WARNING = 0.15


def stability(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines comparing the eager fp32 baseline measured first with the same measured last."""
    checks = [r for r in rows if r["recheck_throughput_ips"] and r["throughput_ips"]]
    if not checks:
        return []
    ratios = [r["recheck_throughput_ips"] / r["throughput_ips"] for r in checks]
    listing = ", ".join(f"batch {r['batch_size']}: {r['throughput_ips']:.1f} -> {r['recheck_throughput_ips']:.1f} "
                        f"img/s" for r in checks)
    if max(abs(x - 1) for x in ratios) > DRIFT_WARNING:
        return [f"**Unsteady machine:** eager fp32, measured first and again after every other backend, moved by "
                f"up to {100 * max(abs(x - 1) for x in ratios):.0f}% ({listing}). Something else was using the "
                "machine; compare backends with care or rerun on a quiet machine.", ""]
    return [f"Stability check: eager fp32 measured first and again last agrees within "
            f"{100 * DRIFT_WARNING:.0f}% ({listing}).", ""]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The whole ``results.md``."""
    first = rows[0]
    env = first["env"]
    mags = _mags(rows)
    size = first["image_size"]
    hw = env["gpu"] or f"CPU ({env['cpu']}, {env['cpu_count']} cores, {env['torch_threads']} torch threads)"
    lines = [
        f"# {first['model']} inference benchmark on {hw}", "",
        f"**{first['data'][0].upper()}{first['data'][1:]}**", "",
        f"Checkpoint `{first['checkpoint']}` ({first['task']} task), input {size}x{size} px.",
        f"torch {env['torch']}, CUDA {env['cuda'] or '-'}, driver {env['driver'] or '-'}, timm {env['timm']}, "
        f"onnxruntime {env['onnxruntime'] or '-'}, TensorRT {env['tensorrt'] or '-'}; git {env['git_sha'] or '-'}; "
        f"{env['time']}.", "",
        f"Compute: {first['params_m']:.1f} M parameters, {first['gflops_per_image']:.2f} GFLOPs per image; measured "
        f"{env['matmul_dtype']} matmul rate {env['matmul_tflops']:.2f} TFLOP/s, so the compute ceiling is "
        f"{_fmt(first['ceiling_ips'], '.0f')} images/s (every FLOP at matmul speed; an optimistic bound).", "",
        "## Efficiency (best batch size per backend)", "",
    ]
    best_rows = []
    for backend, precision in _variants(rows):
        ok = _ok(rows, backend, precision)
        if not ok:
            continue
        best = max(ok, key=lambda r: r["throughput_ips"])
        one = next((r for r in ok if r["batch_size"] == 1), None)
        f1 = [_fmt(best["macro_f1"].get(m), ".3f") for m in mags]
        frac = f"{100 * best['ceiling_fraction']:.1f}%" if best["ceiling_fraction"] is not None else "-"
        best_rows.append([backend, precision, f"{best['throughput_ips']:.1f}", best["batch_size"],
                          _fmt(one and one["latency_p50_ms"], ".2f"), _fmt(best["peak_mem_mb"], ".0f"), frac, *f1,
                          _fmt(best["max_abs_logit_diff"], ".2e")])
    lines += [markdown_table(["backend", "precision", "best throughput (img/s)", "at batch",
                              "batch-1 latency p50 (ms)", "peak VRAM (MB)", "% of ceiling",
                              *(f"macro-F1 {m}" for m in mags), "max abs logit diff vs eager fp32"],
                             best_rows, "ll" + "r" * (6 + len(mags))), "", *stability(rows)]
    n_img = {m: next((r["n_test_images"][m] for r in rows if m in (r["n_test_images"] or {})), 0) for m in mags}
    n_pat = {m: next((r["n_test_patients"][m] for r in rows if m in (r["n_test_patients"] or {})), 0) for m in mags}
    lines += ["", "Macro-F1 on each magnification's test split, computed through the backend itself ("
              + ", ".join(f"{m}: {n_img[m]} images / {n_pat[m]} patients" for m in mags) + ").", "",
              "## Full sweep", "",
              "Latency is per batch; throughput = batch size / mean latency. `first call` includes compilation / "
              "capture; `prepare` is export / engine build.", "", _sweep_table(rows)]
    skipped = [r for r in rows if r["batch_size"] is None]
    if skipped:
        lines += ["", "## Skipped backends", ""]
        lines += [f"- **{r['backend']}** ({r['precision']}): {r['reason']}" for r in skipped]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in PLOTS), ""]
    return "\n".join(lines)


def _sweep_table(rows: list[dict[str, Any]]) -> str:
    """Every measured (backend, precision, batch size) row; skipped backends have no batch size and are left out."""
    body = []
    for r in rows:
        if r["batch_size"] is None:
            continue
        note = (r["reason"] or "") if r["status"] == "ok" else f"{r['status'].upper()}: {r['reason']}"
        body.append([r["backend"], r["precision"], r["batch_size"], _fmt(r["latency_p50_ms"], ".2f"),
                     _fmt(r["latency_p90_ms"], ".2f"), _fmt(r["latency_p99_ms"], ".2f"),
                     _fmt(r["latency_mean_ms"], ".2f"), _fmt(r["throughput_ips"]), _fmt(r["peak_mem_mb"], ".0f"),
                     _fmt(r["nvml_mem_delta_mb"], ".0f"), _fmt(r["prepare_s"], ".2f"), _fmt(r["first_call_s"], ".2f"),
                     _fmt(r["n_iters"], "d"), note])
    return markdown_table(["backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s",
                           "peak VRAM MB", "NVML delta MB", "prepare s", "first call s", "iters", "note"], body,
                          "ll" + "r" * 11 + "l")


def _batch_axis(ax, rows) -> None:
    """Log2 batch-size axis ticked at the measured sizes."""
    sizes = sorted({r["batch_size"] for r in rows if r["status"] == "ok"})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()


def plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The four PNGs of :data:`PLOTS`."""

    plt = pyplot()

    variants = [(b, p) for b, p in _variants(rows) if _ok(rows, b, p)]
    title = f"{rows[0]['model']} on {rows[0]['env']['gpu'] or 'CPU'}"
    paths = []

    def save(fig, name):
        paths.append(save_figure(fig, out_dir / name))

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for b, p in variants:
        ok = _ok(rows, b, p)
        ax.plot([r["batch_size"] for r in ok], [r["throughput_ips"] for r in ok], "o-", label=f"{b} {p}")
    ceiling = rows[0]["ceiling_ips"]
    if ceiling:
        ax.axhline(ceiling, color="grey", ls="--", lw=1, label="compute ceiling")
    ax.set(yscale="log", xlabel="batch size", ylabel="images / s", title=f"{title}: throughput")
    _batch_axis(ax, rows)
    ax.legend(fontsize=7)
    save(fig, PLOTS[0])

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for b, p in variants:
        ok = _ok(rows, b, p)
        x = [r["batch_size"] for r in ok]
        (line,) = ax.plot(x, [r["latency_p50_ms"] for r in ok], "o-", label=f"{b} {p}")
        ax.fill_between(x, [r["latency_p90_ms"] for r in ok], [r["latency_p99_ms"] for r in ok],
                        color=line.get_color(), alpha=0.2)
    ax.set(yscale="log", xlabel="batch size", ylabel="latency per batch (ms)",
           title=f"{title}: latency p50 (band: p90-p99)")
    _batch_axis(ax, rows)
    ax.legend(fontsize=7)
    save(fig, PLOTS[1])

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for b, p in variants:
        ok = _ok(rows, b, p)
        ax.plot([r["latency_p50_ms"] for r in ok], [r["throughput_ips"] for r in ok], "o-", label=f"{b} {p}")
        for r in ok:
            ax.annotate(str(r["batch_size"]), (r["latency_p50_ms"], r["throughput_ips"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    ax.set(xscale="log", yscale="log", xlabel="latency p50 per batch (ms)", ylabel="images / s",
           title=f"{title}: latency vs throughput (labels: batch size)")
    ax.legend(fontsize=7)
    save(fig, PLOTS[2])

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    measured = [(b, p) for b, p in variants if any(r["peak_mem_mb"] is not None for r in _ok(rows, b, p))]
    for b, p in measured:
        ok = [r for r in _ok(rows, b, p) if r["peak_mem_mb"] is not None]
        ax.plot([r["batch_size"] for r in ok], [r["peak_mem_mb"] for r in ok], "o-", label=f"{b} {p}")
    if measured:
        ax.set(xlabel="batch size", ylabel="peak VRAM (MB, torch max_memory_allocated)")
        _batch_axis(ax, rows)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "CPU run: no GPU memory to measure", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{title}: peak VRAM")
    save(fig, PLOTS[3])
    return paths


def write_report(rows: list[dict[str, Any]], out_dir: str | Path) -> Path:
    """``results.md`` and the plots in ``out_dir``; returns the Markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError("no result rows to report")
    plots(rows, out_dir)
    path = out_dir / "results.md"
    path.write_text(to_markdown(rows))
    return path
