"""``histo-ingest``: raw data -> zarr stores. Thin typer commands: parse, build a config, call the library.

Exit codes: 0 done; 1 nothing could be done (the message says why); 3 the store was written but some input files
were skipped (each named in the log and the summary).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from histo_bench.command_group import HandledGroup
from histo_bench.command_options import config_from, fail, field_help
from histo_bench.console import console, progress_bar, setup_logging, stdout
from histo_bench.errors import EXIT_ERROR, EXIT_SKIPPED
from ingest.synthetic.demo_size import DEMO_IMAGES_PER_MAGNIFICATION, DEMO_PATIENTS_PER_CLASS

app = typer.Typer(cls=HandledGroup, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Turn BreakHis folders and whole-slide images into compressed, sharded zarr stores.")

@app.callback()
def _main(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")] = 0,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False) -> None:
    setup_logging(verbose, quiet)


def _parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"700x460"`` (width x height, as image sizes are usually written) -> (height, width)."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        fail(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 700x460 or 224x224")
    return h, w


#: ``demo``'s options -> :class:`ingest.synthetic.breakhis_tree.SyntheticConfig` fields; defaults: the demo dataset's
#: size (:func:`ingest.synthetic.demo.demo_config`).
DEMO_FIELDS = {"patients_per_class": "patients_per_class", "images": "images_per_magnification", "seed": "seed"}
_SYNTHETIC = "ingest.synthetic.breakhis_tree:SyntheticConfig"


@app.command()
def demo(out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the BreaKHis_v1 tree.")],
         patients_per_class: Annotated[int, typer.Option(help=field_help(_SYNTHETIC, "patients_per_class"))
                                       ] = DEMO_PATIENTS_PER_CLASS,
         images: Annotated[int, typer.Option(help=field_help(_SYNTHETIC, "images_per_magnification"))
                           ] = DEMO_IMAGES_PER_MAGNIFICATION,
         seed: Annotated[int, typer.Option(help=field_help(_SYNTHETIC, "seed"))] = 0,
         workers: Annotated[int, typer.Option(help="Generator processes.")] = 2,
         grid: Annotated[Optional[Path], typer.Option(
             help="Also write a class x magnification overview PNG here.")] = None,
         slides: Annotated[Optional[Path], typer.Option(
             help="Also write synthetic pyramidal slides (40x, 0.25 µm/px) into this folder.")] = None) -> None:
    """Generate the synthetic BreakHis demo dataset (8 classes, 4 magnifications, real folder layout)."""
    given = dict(locals())  # first: the command line's options, nothing else
    from ingest.synthetic.breakhis_tree import SyntheticConfig, make_grid
    from ingest.synthetic.demo import write_demo_slides, write_demo_tree

    config = config_from(SyntheticConfig, DEMO_FIELDS, given)
    with progress_bar("generating") as progress:
        root = write_demo_tree(out, config, progress=progress, workers=workers)
    console.print(f"synthetic BreakHis tree written to [bold]{root}[/]")
    if grid is not None:
        console.print(f"overview grid written to [bold]{make_grid(grid, seed=seed, tile_width=200)}[/]")
    if slides is not None:
        paths = write_demo_slides(slides)
        console.print(f"{len(paths)} synthetic slides written to [bold]{slides}[/]")


#: ``breakhis``'s options -> :class:`ingest.breakhis.IngestConfig` fields (their help is the field's).
BREAKHIS_FIELDS = {"root": "root", "out": "out", "size": "size", "mag": "magnifications", "workers": "workers",
                   "shard_size": "shard_size", "overwrite": "overwrite"}
_INGEST = "ingest.breakhis:IngestConfig"


@app.command()
def breakhis(
    root: Annotated[Optional[Path], typer.Argument(help=field_help(_INGEST, "root", "Default: the embedded demo "
                                                                                     "data."))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help=field_help(_INGEST, "out", "Required with "
                                                                                             "ROOT."))] = None,
    size: Annotated[Optional[str], typer.Option(help=field_help(_INGEST, "size", "Given as WIDTHxHEIGHT, e.g. "
                                                                                 "700x460."))] = None,
    mag: Annotated[Optional[list[str]], typer.Option("--mag", help=field_help(
        _INGEST, "magnifications", "40X 100X 200X 400X, 'mixed' or 'all' (the default); repeatable."))] = None,
    split: Annotated[str, typer.Option(
        help="Patient-level split: fractions '0.7,0.15,0.15' or images per class '140/30/30'.")] = "0.7,0.15,0.15",
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    workers: Annotated[int, typer.Option(help=field_help(_INGEST, "workers"))] = 0,
    shard_size: Annotated[int, typer.Option(help=field_help(_INGEST, "shard_size"))] = 32,
    overwrite: Annotated[bool, typer.Option(help=field_help(_INGEST, "overwrite"))] = False,
) -> None:
    """Ingest a BreakHis tree into a zarr store with patient-level splits, then print its summary."""
    given = dict(locals())  # first: the command line's options, nothing else
    if workers != 1:  # the worker processes' imports run on another core while this one goes on
        from ingest.workers import start_forkserver

        start_forkserver(("ingest.image_pool",))  # histo-ingest started it already (ingest.__main__)
    from ingest.breakhis import IngestConfig, ingest_breakhis  # light: zarr is imported once the workers decode
    from ingest.splits import SplitConfig, SplitError

    if root is None:
        from ingest.synthetic.demo import data_home, demo_tree  # here only: it imports the tiler (and scipy)

        with progress_bar("generating demo data") as progress:
            root = demo_tree(progress=progress)
        out = out or data_home() / "demo" / "breakhis.zarr"
    if out is None:
        fail("--out is required when a ROOT is given (e.g. --out data/breakhis.zarr)")
    out = Path(os.path.abspath(out))  # `--out .` names the current folder
    try:
        split_config = SplitConfig.parse(split, seed)
    except SplitError as exc:  # the message does not know the option's name
        fail(f"--split {split!r}: {exc}")
    config = config_from(IngestConfig, {**BREAKHIS_FIELDS, "split": "split"}, given, root=root, out=out,
                         size=_parse_size(size), split=split_config)
    with progress_bar("ingesting") as progress:
        summary = ingest_breakhis(config, progress=progress, command=True)
    if summary.already_complete:
        console.print(f"{out} is already complete; nothing to do (pass --overwrite to rebuild it)")
    else:
        console.print(f"[bold green]wrote {summary.images} images[/] to {out} in {summary.seconds:.1f} s "
                      f"({summary.images_per_s:.0f} images/s){' (resumed)' if summary.resumed else ''}; "
                      f"skipped {len(summary.skipped)}, converted {len(summary.converted)}", highlight=False)
    _print_info(out)
    if summary.skipped:
        console.print(f"[yellow]{len(summary.skipped)} file(s) skipped:[/]", highlight=False)
        for problem in summary.skipped[:50]:
            console.print(f"  {problem.line()}", highlight=False, markup=False, soft_wrap=True)
        if len(summary.skipped) > 50:
            console.print(f"  ... and {len(summary.skipped) - 50} more (all listed in the store's attrs)")
        raise typer.Exit(EXIT_SKIPPED)


#: ``tile``'s options -> :class:`ingest.tiling.TileConfig` fields (their help is the field's).
TILE_FIELDS = {"mag": "magnifications", "mpp": "mpps", "tile_size": "tile_size", "tissue_threshold": "tissue_threshold",
               "base_mag": "base_magnification", "base_mpp": "base_mpp", "reader": "reader", "multiscale": "multiscale",
               "masks": "masks", "read_workers": "read_workers", "codec": "codec", "quality": "quality"}
_TILE = "ingest.tiling:TileConfig"


@app.command()
def tile(
    slides: Annotated[Optional[Path], typer.Argument(
        help="A slide file or a folder of slides (SVS, pyramidal TIFF, NDPI...). Default: the demo slides.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Slide store to write (.zarr); resumable.")] = None,
    mag: Annotated[Optional[list[float]], typer.Option("--mag", help=field_help(
        _TILE, "magnifications", "Repeatable: --mag 20 --mag 5 (default 20 unless --mpp is given)."))] = None,
    mpp: Annotated[Optional[list[float]], typer.Option("--mpp", help=field_help(_TILE, "mpps", "Repeatable."))
                   ] = None,
    tile_size: Annotated[int, typer.Option(help=field_help(_TILE, "tile_size"))] = 224,
    tissue_threshold: Annotated[float, typer.Option(help=field_help(_TILE, "tissue_threshold"))] = 0.5,
    base_mag: Annotated[Optional[float], typer.Option(help=field_help(_TILE, "base_magnification"))] = None,
    base_mpp: Annotated[Optional[float], typer.Option(help=field_help(_TILE, "base_mpp"))] = None,
    reader: Annotated[str, typer.Option(help=field_help(_TILE, "reader", "Readers: cucim, openslide, tifffile."))
                      ] = "auto",
    multiscale: Annotated[bool, typer.Option(help=field_help(_TILE, "multiscale", "Fields 1x/2x/4x/8x."))] = False,
    masks: Annotated[Optional[Path], typer.Option(help=field_help(_TILE, "masks"))] = None,
    workers: Annotated[int, typer.Option(help="Slides in parallel (local processes).")] = 2,
    read_workers: Annotated[int, typer.Option(help=field_help(_TILE, "read_workers"))] = 2,
    codec: Annotated[str, typer.Option(help=field_help(_TILE, "codec", "Trade-offs: docs/ingest.md."))] = "auto",
    quality: Annotated[int, typer.Option(help=field_help(_TILE, "quality"))] = 90,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address (tcp://HOST:PORT).")] = None,
) -> None:
    """Tile whole-slide images: tissue detection, tiles at each magnification, a zarr slide store + overlays."""
    given = dict(locals())  # first: the command line's options, nothing else
    import ingest.readers  # noqa: F401 - registers the readers
    from histo_bench.console import slide_progress
    from ingest.readers.base import READERS
    from ingest.report_tables import tiling_tables
    from ingest.tile_runner import TileEvents, run_tiling
    from ingest.tiling import SLIDE_EXTENSIONS, TileConfig, find_slides

    if slides is None:
        from ingest.synthetic.demo import data_home, demo_slides

        slides = demo_slides()
        out = out or data_home() / "demo" / "tiles.zarr"
    if out is None:
        fail("--out is required when SLIDES are given (e.g. --out data/tiles.zarr)")
    out = Path(os.path.abspath(out))  # `--out .` names the current folder
    if masks is not None and not masks.is_dir():
        fail(f"--masks {masks}: no such folder")
    if reader != "auto" and reader not in READERS:
        fail(f"--reader {reader!r}: use auto or one of {', '.join(READERS.names())}")
    config = config_from(TileConfig, TILE_FIELDS, given, mag=tuple(mag or ()) if (mag or mpp) else None)
    paths = find_slides(slides)
    if not paths:
        fail(f"{slides}: no slide files found (looked for {', '.join(sorted(SLIDE_EXTENSIONS))})")
    overlay_dir = out.with_name(out.name + ".overlays")
    with slide_progress(len(paths)) as (started, step, finished):
        events = TileEvents(slide_started=started, slide_progress=step, slide_finished=finished)
        summary = run_tiling(paths, out, config, workers=workers, scheduler=scheduler, overlay_dir=overlay_dir,
                             events=events)
    for renderable in tiling_tables(summary, overlay_dir):
        stdout.print(renderable)
    failed = summary.count("failed")
    if failed:
        raise typer.Exit(EXIT_ERROR if failed == len(summary.results) else EXIT_SKIPPED)


@app.command()
def info(store: Annotated[Path, typer.Argument(help="A store written by histo-ingest.")],
         patients: Annotated[bool, typer.Option(help="Also list images per patient x magnification.")] = False
         ) -> None:
    """Summarise a store: an image store (classes x magnifications x splits) or a slide store (tiles per slide)."""
    _print_info(store, patients)


def _print_info(path: Path, patients: bool = False) -> None:
    from ingest.output_guard import store_format
    from ingest.report_tables import patient_table, slide_store_tables, store_tables
    from ingest.slide_store import FORMAT as SLIDE_FORMAT
    from ingest.slide_store import SlideStore
    from ingest.store import ImageStore

    if store_format(path) == SLIDE_FORMAT:
        slide_store = SlideStore(path)
        slide_store.verify()  # every shard of every slide: present, index readable (no tile decoded)
        renderables = slide_store_tables(slide_store)
    else:
        image_store = ImageStore(path)
        image_store.verify()  # every shard: present, index readable (no image decoded)
        renderables = store_tables(image_store) + ([patient_table(image_store)] if patients else [])
    for renderable in renderables:
        stdout.print(renderable)


def main() -> None:
    from ingest.workers import run_app

    run_app(app)


if __name__ == "__main__":
    main()
