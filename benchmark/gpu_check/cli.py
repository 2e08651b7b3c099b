"""``python -m benchmark.gpu_check.cli``: the commands ``benchmark/gpu_check.sh`` calls.

    carry     measure what the call carries (before any GPU work); exit 1 when it would not travel or install
    wheels    --write-manifest: record the sizes of the wheels in .whl/ (``make gpu-wheels``)
    site      build the rehearsal's folder of the GPU machine's packages (links into a venv's site-packages)
    run       every step in order within the plan's budget -> summary.md, results.tar.gz, steps.json, the log
    step      one step (what ``run`` starts in a process of its own)

``carry``, ``wheels`` and ``site`` use the standard library only (nothing is installed yet when they run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("benchmark.gpu_check")
ROOT = Path(__file__).resolve().parents[2]


def _carry(args) -> int:
    from benchmark.gpu_check.carry import measure

    carry = measure(ROOT, wheels_required=args.wheels_required)
    log.info("%s", carry.line())
    for problem in carry.problems:
        log.error("carry: %s", problem)
    if args.json:
        Path(args.json).write_text(json.dumps(carry.as_dict(), indent=1))
    return 1 if carry.problems else 0


def _wheels(args) -> int:
    from benchmark.gpu_check.carry import write_manifest

    log.info("wrote %s", write_manifest(ROOT))
    return 0


def _site(args) -> int:
    from benchmark.gpu_check.device_site import CARRIED_DISTRIBUTIONS, build_site, normalize

    result = build_site(Path(args.venv_site).resolve(), Path(args.to))
    carried = sorted(n for n in result["absent"] if n in {normalize(c) for c in CARRIED_DISTRIBUTIONS})
    if carried:
        log.info("carried distributions this venv lacks (their wheels are checked, not imported): %s",
                 ", ".join(carried))
    return 0


def _run(args) -> int:
    from benchmark.gpu_check.driver import LOG_NAME, run_check

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / LOG_NAME).write_text("")  # this run's log; the steps append to it too
    handler = logging.FileHandler(Path(args.out) / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return run_check(args.plan, Path(args.out), work, ROOT)


def _step(args) -> int:
    from benchmark.gpu_check import steps
    from benchmark.gpu_check.plan import PLANS

    steps.probe_imports()
    plan, work = PLANS[args.plan], Path(args.work)
    if args.name == "environment":
        steps.environment_step(plan, work)
    elif args.name == "store":
        steps.store_step(plan, work)
    elif args.name.startswith("model:"):
        steps.model_step(plan, work, args.name.split(":", 1)[1])
    elif args.name == "tiling":
        steps.tiling_step(plan, work)
    else:
        log.error("unknown step %r", args.name)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.gpu_check.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("carry")
    p.add_argument("--wheels-required", action="store_true", help="the .whl folders must be here (device)")
    p.add_argument("--json", help="also write the measurement here")
    p.set_defaults(fn=_carry)
    sub.add_parser("wheels").add_argument("--write-manifest", action="store_true", required=True)
    sub.choices["wheels"].set_defaults(fn=_wheels)
    p = sub.add_parser("site")
    p.add_argument("--venv-site", required=True)
    p.add_argument("--to", required=True)
    p.set_defaults(fn=_site)
    p = sub.add_parser("run")
    p.add_argument("--plan", choices=("device", "rehearse"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work")
    p.set_defaults(fn=_run)
    p = sub.add_parser("step")
    p.add_argument("name")
    p.add_argument("--plan", choices=("device", "rehearse"), required=True)
    p.add_argument("--work", required=True)
    p.set_defaults(fn=_step)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
