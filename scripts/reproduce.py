#!/usr/bin/env python
"""Reproduce, in small, the qualitative claims of "Revisiting adapters with adversarial training" (Rebuffi, Croce &
Gowal, ICLR 2023) on a 2-core CPU, and write the report as the model card of the co-trained model.

Launch (offline; OMP_NUM_THREADS=1: every job runs single-threaded, --jobs of them at once)::

    OMP_NUM_THREADS=1 python scripts/reproduce.py --dataset fashion_mnist     # the study -> model_cards/fashion-mnist/
    OMP_NUM_THREADS=1 python scripts/reproduce.py --dataset digits            # -> model_cards/digits/
    OMP_NUM_THREADS=1 python scripts/reproduce.py --quick --output_dir /tmp/q  # a smoke run of every section
    python scripts/reproduce.py --sections table1 soups --epsilon 0.1          # a subset, radius given (no sweep)
    python scripts/reproduce.py --report_only --output_dir model_cards/fashion-mnist   # re-render the card

The study engine, its presets and the card live in :mod:`hf_advsoup.study` (docs/reproduce.md); this script parses
:class:`hf_advsoup.study.StudyArguments` and calls :func:`hf_advsoup.study.run_study`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from transformers import HfArgumentParser

from hf_advsoup.cli import RESUME_HINT, check_job_locations, run
from hf_advsoup.study import StudyArguments, run_study
from hf_advsoup.study.jobs import format_duration

COTRAIN = Path(__file__).resolve().parent / "cotrain.py"


def main(argv: list[str] | None = None) -> dict:
    """Run the study (or rewrite its card with --report_only); return the results dictionary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses(args=argv)
    check_job_locations(args)
    if args.cotrain_script is None:
        args.cotrain_script = str(COTRAIN)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = run_study(args, command="python scripts/reproduce.py" + (" " + " ".join(argv) if argv else ""))
    total = results.get("timings", {}).get("total")
    print(f"Card: {Path(results['output_dir']) / 'README.md'}"
          + (f" (wall time {format_duration(total)})" if total is not None and not args.report_only else ""))
    return results


if __name__ == "__main__":
    run(main, interrupt_hint=RESUME_HINT)
