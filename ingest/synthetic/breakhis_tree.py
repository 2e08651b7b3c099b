"""Deterministic synthetic H&E breast-histology images in the exact BreakHis folder layout.

This is the project's embedded demo / test data: :func:`generate_tree` writes
``<out_dir>/BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<class>/SOB_<B|M>_<code>_<patient>/<mag>X/*.png``
exactly like the public dataset, so every loader and benchmark runs on it unchanged. The images are
rendered procedurally by :mod:`ingest.synthetic.he_render`: class-dependent morphology (glands, slit ducts,
clefts, carcinoma nests, single-file cells, mucin pools, papillary fronds), magnification-dependent scale
(field of view ~ 1 / magnification) and patient-level stain / density variation. Every pixel is a function
of ``(seed, class, patient, magnification, index)`` only (``numpy.random.SeedSequence``; no ``hash()``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from histo_bench.errors import ConfigError
from ingest.breakhis_names import CLASSES, MAGNIFICATIONS, relative_path
from ingest.disk import raise_if_environment
from ingest.synthetic.he_render import render_field
from ingest.workers import process_pool

log = logging.getLogger(__name__)

_PATIENT_BASE = 10001  # patient ids are "14-<_PATIENT_BASE + 1000 * class_index + p>"
_MAX_PATIENTS = 999


@dataclass(frozen=True)
class SyntheticConfig:
    """What :func:`generate_tree` writes.

    Attributes:
        patients_per_class: patients (slides) per class, 1..999; ids come from :func:`patients_for`.
        images_per_magnification: images per patient per magnification (sequence numbers 1..N), 1..999.
        magnifications: subset of ``("40X", "100X", "200X", "400X")``, no duplicates.
        classes: subset of the eight BreakHis class names, no duplicates.
        height: image height in pixels (BreakHis: 460), 16..4096.
        width: image width in pixels (BreakHis: 700), 16..4096.
        seed: global seed; a different seed gives a different but equally distributed data set.
    """

    patients_per_class: int = 4
    images_per_magnification: int = 8
    magnifications: tuple[str, ...] = MAGNIFICATIONS
    classes: tuple[str, ...] = CLASSES
    height: int = 460
    width: int = 700
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("patients_per_class", "images_per_magnification", "height", "width", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"SyntheticConfig.{name} must be an int, got {value!r}")
        if not 1 <= self.patients_per_class <= _MAX_PATIENTS:
            raise ConfigError(f"patients_per_class must be in 1..{_MAX_PATIENTS}, got {self.patients_per_class}")
        if not 1 <= self.images_per_magnification <= 999:
            raise ConfigError(f"images_per_magnification must be in 1..999, got {self.images_per_magnification}")
        if not (16 <= self.height <= 4096 and 16 <= self.width <= 4096):
            raise ConfigError(f"height/width must be in 16..4096, got {self.height}x{self.width}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        _check_subset("magnifications", self.magnifications, MAGNIFICATIONS)
        _check_subset("classes", self.classes, CLASSES)

    @property
    def total_images(self) -> int:
        """Number of images the configuration describes."""
        return (len(self.classes) * self.patients_per_class * len(self.magnifications)
                * self.images_per_magnification)


def _check_subset(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    """Raise ValueError unless ``values`` is a non-empty duplicate-free tuple drawn from ``allowed``."""
    if isinstance(values, str) or not isinstance(values, tuple | list) or not values:
        raise ConfigError(f"SyntheticConfig.{name} must be a non-empty tuple, got {values!r}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"SyntheticConfig.{name}: unknown {unknown} (allowed: {', '.join(allowed)})")
    if len(set(values)) != len(values):
        raise ConfigError(f"SyntheticConfig.{name} has duplicates: {values!r}")


def patients_for(class_name: str, config: SyntheticConfig) -> list[str]:
    """The deterministic patient ids of a class, e.g. ``["14-10001", "14-10002", ...]`` for adenosis.

    Ids are distinct across classes (class ``i`` uses the block ``10001 + 1000 * i``) and match the BreakHis
    patient grammar ``\\d+-[0-9A-Za-z]+``.
    """
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r} (known: {', '.join(CLASSES)})")
    base = _PATIENT_BASE + 1000 * CLASSES.index(class_name)
    return [f"14-{base + p}" for p in range(config.patients_per_class)]


def _entropy(patient: str) -> int:
    """A stable integer for a patient id (its UTF-8 bytes), usable as SeedSequence entropy."""
    return int.from_bytes(patient.encode("utf-8"), "big")


def render_image(class_name: str, magnification: str, patient: str, index: int, *, seed: int = 0,
                 height: int = 460, width: int = 700) -> np.ndarray:
    """Render one synthetic H&E field as an ``(height, width, 3)`` uint8 RGB array.

    Deterministic in all arguments. The patient's stain vectors, stain intensities, stromal cellularity and
    tissue-gap tendency depend only on ``(seed, class_name, patient)``; the field itself additionally on
    ``magnification`` and ``index``.
    """
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r} (known: {', '.join(CLASSES)})")
    if magnification not in MAGNIFICATIONS:
        raise ValueError(f"unknown magnification {magnification!r} (known: {', '.join(MAGNIFICATIONS)})")
    if not (16 <= height <= 4096 and 16 <= width <= 4096):
        raise ValueError(f"height/width must be in 16..4096, got {height}x{width}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    ci, pe = CLASSES.index(class_name), _entropy(patient)
    patient_rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB4EA, ci, pe]))
    field_rng = np.random.default_rng(
        np.random.SeedSequence([seed, 0xF1E1D, ci, pe, MAGNIFICATIONS.index(magnification), index]))
    return render_field(class_name, magnification, patient_rng, field_rng, height, width)


def _jobs(out_dir: Path, config: SyntheticConfig) -> list[tuple[str, str, str, int, Path]]:
    """Every (class, patient, magnification, seq, path) of the configuration, in a stable order."""
    jobs = []
    for cls in config.classes:
        for patient in patients_for(cls, config):
            for mag in config.magnifications:
                for seq in range(1, config.images_per_magnification + 1):
                    jobs.append((cls, patient, mag, seq, out_dir / relative_path(cls, patient, mag, seq)))
    return jobs


def _write_one(job: tuple[str, str, str, int, Path, int, int, int]) -> Path:
    """Render and atomically write one image (temp file + ``os.replace``); skip an existing file."""
    cls, patient, mag, seq, path, seed, height, width = job
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = render_image(cls, mag, patient, seq, seed=seed, height=height, width=width)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: one error naming the image, returned whole by a worker process
        raise_if_environment(exc, path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def generate_tree(out_dir: str | Path, config: SyntheticConfig = SyntheticConfig(), *,
                  progress: Callable[[int, int], None] | None = None, workers: int = 1) -> list[Path]:
    """Write the synthetic BreakHis tree under ``out_dir`` and return every image path (written or existing).

    Idempotent: a file that already exists is kept as is (writes go to a temporary name and are moved into
    place with ``os.replace``, so an interrupted run never leaves a truncated PNG). ``progress(done, total)``
    is called after each image. ``workers > 1`` renders in a process pool.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    jobs = [(*j, config.seed, config.height, config.width) for j in _jobs(out, config)]
    total = len(jobs)
    log.debug("generating %d synthetic images under %s with %d worker(s)", total, out, workers)
    paths: list[Path] = []
    if workers == 1:
        results = map(_write_one, jobs)
        for done, path in enumerate(results, 1):
            paths.append(path)
            if progress is not None:
                progress(done, total)
        return paths

    with process_pool(workers) as pool:
        for done, path in enumerate(pool.map(_write_one, jobs, chunksize=4), 1):
            paths.append(path)
            if progress is not None:
                progress(done, total)
    return paths


def make_grid(path: str | Path, *, seed: int = 0, tile_width: int = 350) -> Path:
    """Write one PNG overview: rows = the 8 classes, columns = the 4 magnifications, labelled; returns the path."""
    if tile_width < 32:
        raise ValueError(f"tile_width must be >= 32, got {tile_width}")
    tile_h = round(tile_width * 460 / 700)
    label_w, label_h = 150, 22
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (label_w + tile_width * len(MAGNIFICATIONS), label_h + tile_h * len(CLASSES)), "white")
    draw = ImageDraw.Draw(canvas)
    cfg = SyntheticConfig(patients_per_class=1, seed=seed)
    for j, mag in enumerate(MAGNIFICATIONS):
        draw.text((label_w + j * tile_width + tile_width // 2 - 12, 5), mag, fill="black", font=font)
    for i, cls in enumerate(CLASSES):
        y = label_h + i * tile_h
        draw.text((5, y + tile_h // 2 - 6), cls.replace("_", " "), fill="black", font=font)
        patient = patients_for(cls, cfg)[0]
        for j, mag in enumerate(MAGNIFICATIONS):
            tile = Image.fromarray(render_image(cls, mag, patient, 1, seed=seed))
            canvas.paste(tile.resize((tile_width, tile_h), Image.Resampling.LANCZOS), (label_w + j * tile_width, y))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG", compress_level=6)
    return out
