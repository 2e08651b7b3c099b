"""``histo-bench run`` end to end on a tiny checkpoint, the result rows, the report files and ``compare``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmark.cli.app import app
from benchmark.reports.benchmark_report import PLOTS
from benchmark.results import ROW_FIELDS, compare_rows, flatten, load_rows
from benchmark.run import BenchConfig, BenchError, _variants, run_benchmark

FAST = dict(warmup=1, min_iters=3, min_time_s=0.0, max_time_s=0.3)


@pytest.fixture(scope="module")
def result(bench_checkpoint, bench_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    config = BenchConfig(model="tiny_cnn_test", checkpoint=str(bench_checkpoint), data=str(bench_store),
                         backends=("eager", "amp", "onnxruntime", "cudagraphs", "tensorrt"), batch_sizes=(1, 4),
                         device="cpu", out=str(out), **FAST)
    return run_benchmark(config)


def test_every_row_has_every_field_and_consistent_numbers(result):
    out_dir, rows = result
    assert all(list(r) == list(ROW_FIELDS) for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["backend"], r["precision"], r["batch_size"]) for r in ok} == {
        (b, p, bs) for b, p in (("eager", "fp32"), ("amp", "bf16"), ("onnxruntime", "fp32")) for bs in (1, 4)}
    for r in ok:
        assert r["latency_p50_ms"] <= r["latency_p90_ms"] <= r["latency_p99_ms"]
        assert r["throughput_ips"] == pytest.approx(r["batch_size"] / (r["latency_mean_ms"] / 1000))
        assert set(r["macro_f1"]) == set(r["accuracy"]) == {"100X", "400X"}
        assert all(0 <= v <= 1 for v in r["macro_f1"].values())
        assert r["n_test_images"]["100X"] > 0 and r["n_test_patients"]["100X"] > 0
        assert r["gflops_per_image"] > 0 and r["params_m"] > 0 and r["ceiling_ips"] > 0
        assert r["env"]["torch"] and r["env"]["time"] and r["env_tag"] == out_dir.name
        assert r["data"].startswith("data: user-provided")
    by = {r["backend"]: r for r in ok}
    # eager against its own batch-32 reference: another batch size may block the GEMMs differently (~1e-7)
    assert by["eager"]["max_abs_logit_diff"] < 1e-5 and by["eager"]["top1_agreement"] == 1
    assert by["onnxruntime"]["max_abs_logit_diff"] < 1e-4
    assert by["amp"]["max_abs_logit_diff"] > 0  # bf16 changes the logits a little, and the row shows it
    assert by["eager"]["recheck_throughput_ips"] > 0 and by["amp"]["recheck_throughput_ips"] is None


def test_stability_line_flags_a_drifting_baseline():
    from benchmark.reports.benchmark_report import stability

    steady = {"throughput_ips": 100.0, "recheck_throughput_ips": 95.0, "batch_size": 8}
    assert stability([steady])[0].startswith("Stability check")
    assert stability([dict(steady, recheck_throughput_ips=10.0)])[0].startswith("**Unsteady machine:**")
    assert stability([dict(steady, recheck_throughput_ips=None)]) == []


def test_skipped_backends_are_rows_with_reasons(result):
    _, rows = result
    skipped = {r["backend"]: r for r in rows if r["status"] == "skipped"}
    assert set(skipped) == {"cudagraphs", "tensorrt"}
    assert all(r["reason"] and r["batch_size"] is None for r in skipped.values())


def test_files_and_report(result):
    out_dir, rows = result
    assert load_rows(out_dir) == json.loads(json.dumps(rows))
    header = (out_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert {"macro_f1_100X", "macro_f1_400X", "latency_p99_ms", "env_gpu"} <= set(header)
    md = (out_dir / "results.md").read_text()
    assert "## Efficiency" in md and "## Skipped backends" in md and "needs a CUDA GPU" in md
    assert "Stability check" in md or "Unsteady machine" in md
    assert "Data: user-provided" in md and "macro-F1 100X" in md
    for name in PLOTS:
        assert (out_dir / name).stat().st_size > 5000
    assert json.loads((out_dir / "config.json").read_text())["device"] == "cpu"
    assert "macro_f1_100X" in flatten(rows[0]) or rows[0]["status"] != "ok"


def test_compare_ratios_and_cli(result, tmp_path):
    out_dir, rows = result
    slower = [dict(r, throughput_ips=r["throughput_ips"] / 2, latency_p50_ms=r["latency_p50_ms"] * 2)
              if r["status"] == "ok" else r for r in rows]
    pairs = compare_rows(rows, slower)
    assert len(pairs) == 6 and all(p["throughput_ratio"] == pytest.approx(0.5) for p in pairs)
    assert all(p["latency_ratio"] == pytest.approx(2.0) for p in pairs)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in slower))
    res = CliRunner().invoke(app, ["compare", str(out_dir), str(tmp_path / "b")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "0.50x" in res.output and "2.00x" in res.output
    res = CliRunner().invoke(app, ["compare", str(out_dir), str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no benchmark results here" in res.output


def test_bad_input_is_a_clear_error(bench_checkpoint, tmp_path):
    with pytest.raises(KeyError, match="valid names"):
        BenchConfig(backends=("warp_drive",))
    with pytest.raises(ValueError, match="unknown precision"):
        BenchConfig(precisions=("int3",))
    with pytest.raises(ValueError, match="unknown task"):
        BenchConfig(task="grade")
    with pytest.raises(BenchError, match="no such checkpoint"):
        run_benchmark(BenchConfig(model="tiny_cnn_test", checkpoint=str(tmp_path / "x.pt"), device="cpu"))
    with pytest.raises(BenchError, match="holds tiny_cnn_test"):
        run_benchmark(BenchConfig(model="resnet50", checkpoint=str(bench_checkpoint), device="cpu"))
    res = CliRunner().invoke(app, ["run", "--model", "tiny_cnn_test", "--checkpoint", str(tmp_path / "x.pt"),
                                   "--device", "cpu"])
    assert res.exit_code == 1 and "no such checkpoint" in res.output


def test_default_backend_set_on_cpu_lists_every_backend():
    from tests.pipelines.tiny_models import TinyCNN

    variants = _variants(BenchConfig(), "cpu", TinyCNN(8))
    names = {v[0] for v in variants}
    assert names == {"eager", "amp", "channels_last", "compile", "compile_max_autotune", "cudagraphs", "tensorrt",
                     "onnxruntime"}
    reasons = {v[0]: v[3] for v in variants}
    assert reasons["eager"] is None and reasons["compile"] is None and reasons["onnxruntime"] is None
    assert reasons["cudagraphs"] and reasons["tensorrt"] and reasons["compile_max_autotune"]


def test_a_failing_accuracy_pass_keeps_the_timing_and_says_why(bench_checkpoint, bench_store, tmp_path, monkeypatch):
    import benchmark.accuracy

    def broken(*args, **kwargs):
        raise RuntimeError("backend returned NaN\nmore")

    monkeypatch.setattr(benchmark.accuracy, "accuracy_fields", broken)
    _, rows = run_benchmark(BenchConfig(model="tiny_cnn_test", checkpoint=str(bench_checkpoint),
                                        data=str(bench_store), backends=("eager",), batch_sizes=(2,), device="cpu",
                                        out=str(tmp_path), **FAST))
    (row,) = rows
    assert row["status"] == "ok" and row["throughput_ips"] > 0 and row["macro_f1"] == {}
    assert row["reason"] == "accuracy failed: RuntimeError: backend returned NaN"


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.lstrip().startswith("│")]


def test_models_lists_the_registered_models_matching_the_pattern():
    from models.registry import MODELS

    res = CliRunner().invoke(app, ["models", "resnet*"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    rows = _rows(res.stdout)
    assert sorted(r[0] for r in rows) == sorted(MODELS.names("resnet*")) and len(rows) >= 2
    assert all(r[1] == MODELS.get(r[0]).family and r[2].endswith(" M") for r in rows)


def test_env_describes_this_machine():
    from importlib.metadata import version

    res = CliRunner().invoke(app, ["env", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert set(info) >= {"python", "platform", "gpus", "core", "optional"}
    assert info["core"]["typer"] == version("typer") and info["optional"]["torch"] == version("torch")
    res = CliRunner().invoke(app, ["env"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and ["typer", version("typer"), "core"] in _rows(res.stdout)


def test_loader_bench_writes_its_measurement(bench_store, tmp_path):
    res = CliRunner().invoke(app, ["loader-bench", "--model", "tiny_cnn_test", "--data", str(bench_store), "--mag",
                                   "100X", "--batch-size", "4", "--image-size", "32", "--steps", "2", "--device", "cpu",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "tiny_cnn_test_cpu.json").read_text())
    assert (result["model"], result["device"], result["batch_size"], result["store"]) == (
        "tiny_cnn_test", "cpu", 4, str(bench_store))
    (row,) = result["rows"]
    assert row["loader"] == "device" and row["loader_images_per_s"] > 0 and row["efficiency"] > 0
    res = CliRunner().invoke(app, ["loader-bench", "--model", "nope", "--data", str(bench_store), "--device", "cpu"])
    assert res.exit_code == 1
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: unknown model 'nope'; valid names: ") and "tiny_cnn_test" in line


@pytest.mark.slow
def test_tile_bench_compares_the_readers_with_the_naive_loop(tmp_path):
    res = CliRunner().invoke(app, ["tile-bench", "--size", "1024", "--workdir", str(tmp_path / "w"), "--out",
                                   str(tmp_path / "o")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    (saved,) = (tmp_path / "o").glob("tiling_*.json")
    rows = json.loads(saved.read_text())["rows"]
    assert rows[-1]["method"].startswith("naive") and rows[-1]["vs_naive"] == 1.0
    assert len(rows) >= 2 and all(r["tiles"] == rows[0]["tiles"] > 0 for r in rows)
    assert f"saved to {saved.with_suffix('.md')}" in res.stdout
