"""``histo-ingest breakhis`` against pure decoding, measured in one run: the ingest's overhead as a ratio.

The baseline decodes every image of the tree with Pillow and nothing else (``np.asarray(Image.open(p).convert(
"RGB"))``) in a ``multiprocessing`` pool of the same number of processes, once per start method of
:attr:`IngestBenchConfig.baselines`: ``fork`` (Linux's default, usually the faster: its children start with
the parent's imports) and ``spawn``. The ingest is the real command (``histo-ingest breakhis ROOT --out STORE --workers
N``, a fresh store each time). All run as subprocesses, so all include their interpreter start, and they alternate
(each decode, then the ingest, then again) so a load change on the machine hits every one. CPU time is that of each
subprocess and its reaped descendants (``RUSAGE_CHILDREN``). The ratio reported is the minimum ingest wall over the
minimum decode wall of the fastest baseline (noise only ever adds time), with the spread of every run.

:func:`replicate_breakhis` makes a large tree from a few real images (new patient ids and sequence numbers, real
BreakHis naming), for measuring on real pixels without committing data.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from histo_bench.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestBenchConfig:
    """What ``histo-bench ingest-bench`` measures.

    Attributes:
        root: the BreakHis tree to ingest (decoded by the baseline too).
        workdir: scratch folder for the stores (emptied per run).
        workers: processes for both the decode baseline and the ingest (``--workers``).
        repeats: rounds of (every decode baseline, then the ingest), alternating.
        baselines: the start methods of the decode baseline's pool; those this platform lacks are left out.
    """

    root: str
    workdir: str = "data/ingest-bench"
    workers: int = 2
    repeats: int = 3
    baselines: tuple[str, ...] = ("fork", "spawn")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.baselines) - {"fork", "spawn", "forkserver"})
        if unknown or not self.baselines:
            raise ConfigError(f"baselines must be start methods (fork, spawn, forkserver), got {self.baselines}")
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        if self.repeats < 1:
            raise ConfigError("repeats must be >= 1")


@dataclass
class IngestBenchResult:
    """Wall and CPU seconds of every run (the decode's per start method), and the ratio of the fastest of each."""

    images: int
    workers: int
    decode: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> {"wall": [...], "cpu"}
    ingest_wall: list[float] = field(default_factory=list)
    ingest_cpu: list[float] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0

    @property
    def baseline(self) -> str:
        """The start method whose decode was fastest: the one the ratio is against."""
        return min(self.decode, key=lambda method: min(self.decode[method]["wall"]))

    @property
    def decode_wall(self) -> list[float]:
        return self.decode[self.baseline]["wall"]

    @property
    def decode_cpu(self) -> list[float]:
        return self.decode[self.baseline]["cpu"]

    @property
    def ratio(self) -> float:
        """Fastest ingest wall / fastest decode wall of the fastest baseline (the goal is <= 1.2)."""
        return min(self.ingest_wall) / min(self.decode_wall)

    @property
    def cpu_ratio(self) -> float:
        return min(self.ingest_cpu) / min(self.decode_cpu)

    def to_dict(self) -> dict:
        return {"images": self.images, "workers": self.workers, "ratio": round(self.ratio, 3),
                "cpu_ratio": round(self.cpu_ratio, 3), "baseline": self.baseline, "decode_wall": self.decode_wall,
                "decode_cpu": self.decode_cpu, "decode_by_start_method": self.decode,
                "ingest_wall": self.ingest_wall, "ingest_cpu": self.ingest_cpu,
                "load_before": self.load_before, "load_after": self.load_after}


def record(result: IngestBenchResult, root: str | Path, replicate: int = 0) -> dict:
    """The JSON record of a run: the figures, what data they ran on (``root`` before any replication, resolved, and
    whether it is real or synthetic) and the machine, commit and time."""
    import platform

    from benchmark.environment import cpu_name, describe, git_sha
    from ingest.breakhis import data_origin

    try:
        origin = data_origin(Path(root))
    except (OSError, ValueError) as exc:  # an unreadable synthetic-data marker: the measured figures still count
        origin = {"kind": "unknown", "error": f"{type(exc).__name__}: {exc}"}
    data = {**origin, "root": str(Path(root).resolve()), "replicated": replicate, "images": result.images}
    return {"benchmark": "histo-ingest breakhis against a Pillow-only decode (benchmark.ingest_speed)",
            "data": data, **result.to_dict(), "cores": os.cpu_count(),
            "machine": {**describe(), "cpu": cpu_name(), "os": platform.platform()},
            "commit": git_sha(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def image_files(root: str | Path) -> list[str]:
    """The image files the baseline decodes: every PNG/JPEG/TIFF under ``root``, sorted."""
    exts = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
    return sorted(str(p) for p in Path(root).rglob("*") if p.suffix.lower() in exts and p.is_file())


def _decode_one(path: str) -> int:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return int(np.asarray(im.convert("RGB")).shape[0])


def decode_tree(root: str, workers: int, start_method: str = "spawn") -> int:
    """The baseline: decode every image under ``root`` with Pillow in ``workers`` processes started by
    ``start_method``; returns the count."""
    files = image_files(root)
    with multiprocessing.get_context(start_method).Pool(workers) as pool:  # direct children: their CPU is counted
        done = sum(1 for _ in pool.imap_unordered(_decode_one, files, chunksize=4))
    return done


def ingest_command() -> list[str]:
    """The ``histo-ingest`` script beside this interpreter (what a user runs), else ``python -m ingest`` (with a
    warning: its workers start differently). A script of an older install (``ingest.cli:main``) is not used."""
    script = Path(sys.executable).with_name("histo-ingest")
    if script.is_file() and "ingest.__main__" in script.read_text(errors="replace"):
        return [str(script)]
    log.warning("%s is missing or from an older install (make install): measuring python -m ingest", script)
    return [sys.executable, "-m", "ingest"]


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one subprocess and its reaped descendants; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 3):  # 3: written, some files skipped
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def measure(config: IngestBenchConfig, progress: Callable[[str], None] | None = None) -> IngestBenchResult:
    """Alternate the decode baseline and the ingest ``config.repeats`` times; see the module doc."""
    root = Path(config.root).resolve()
    work = Path(config.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    result = IngestBenchResult(images=len(image_files(root)), workers=config.workers,
                               load_before=round(os.getloadavg()[0], 2))
    methods = [m for m in config.baselines if m in multiprocessing.get_all_start_methods()]
    if not methods:
        raise ConfigError(f"none of the baselines {config.baselines} can start processes on this platform")
    for r in range(config.repeats):
        for method in methods:
            wall, cpu = _timed([sys.executable, "-c", f"from benchmark.ingest_speed import decode_tree; "
                                f"decode_tree({str(root)!r}, {config.workers}, {method!r})"], repo)
            runs = result.decode.setdefault(method, {"wall": [], "cpu": []})
            runs["wall"].append(round(wall, 3))
            runs["cpu"].append(round(cpu, 3))
        store = work / "store.zarr"
        shutil.rmtree(store, ignore_errors=True)
        wall, cpu = _timed([*ingest_command(), "-q", "breakhis", str(root), "--out", str(store),
                            "--workers", str(config.workers)], repo)
        result.ingest_wall.append(round(wall, 3))
        result.ingest_cpu.append(round(cpu, 3))
        decodes = ", ".join(f"decode ({m}) {result.decode[m]['wall'][-1]:.2f} s" for m in methods)
        fastest = min(result.decode[m]["wall"][-1] for m in methods)
        line = (f"run {r + 1}/{config.repeats}: {decodes}, ingest {result.ingest_wall[-1]:.2f} s "
                f"({result.ingest_wall[-1] / fastest:.2f}x the fastest decode)")
        log.debug(line)
        if progress:
            progress(line)
    shutil.rmtree(work / "store.zarr", ignore_errors=True)
    result.load_after = round(os.getloadavg()[0], 2)
    return result


def replicate_breakhis(src: str | Path, out: str | Path, copies: int) -> int:
    """Copy every BreakHis image under ``src`` ``copies`` times into a new original-layout tree at ``out``, each
    copy under a new patient id (six images per patient) and sequence number; returns the number of files."""
    from ingest.breakhis_names import CLASS_TO_CODE, parse_name, tumour_group

    out = Path(out)
    n = 0
    for k, path in enumerate(sorted(Path(src).rglob("*.png"))):
        name = parse_name(path.name)
        group = tumour_group(name.class_name)
        code, mag = CLASS_TO_CODE[name.class_name], name.magnification[:-1]
        for c in range(copies):
            patient = f"14-{70000 + k * 1000 + c // 6}"
            prefix = f"SOB_{group[0].upper()}_{code}"
            folder = (out / "BreaKHis_v1" / "histology_slides" / "breast" / group / "SOB" / name.class_name
                      / f"{prefix}_{patient}" / f"{mag}X")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / f"{prefix}-{patient}-{mag}-{c % 6 + 1:03d}.png")
            n += 1
    return n
