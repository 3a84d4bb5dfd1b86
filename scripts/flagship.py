#!/usr/bin/env python
"""Train, evaluate and publish the flagship model: the co-trained dual-token ViT on all of Fashion-MNIST at 28 px,
nominal and adversarial training at the same wall-time budget, every test image evaluated, the card and a folder laid
out as the model's Hub repository (docs/flagship.md).

Launch (offline; two single-threaded jobs at a time, one per core)::

    OMP_NUM_THREADS=1 python scripts/flagship.py                       # -> model_cards/fashion-mnist-flagship/
    OMP_NUM_THREADS=1 python scripts/flagship.py --stage train         # only the three trainings
    OMP_NUM_THREADS=1 python scripts/flagship.py --autoattack_examples 2000   # more images under AutoAttack
    OMP_NUM_THREADS=1 python scripts/flagship.py --defences false     # without the per-image defences
    python scripts/flagship.py --quick --work_dir /tmp/flagship_quick  # a smoke run of the whole pipeline
    python scripts/flagship.py --stage report_only                     # re-render the card from results.json

Run again after an interruption (Ctrl-C, a reboot), the same command continues: finished jobs are reused, an
interrupted training resumes from its last checkpoint, an interrupted evaluation from its last finished chunk.
"""

from __future__ import annotations

import logging
import os
import sys

from transformers import HfArgumentParser

from hf_advsoup.cli import RESUME_HINT, check_job_locations, run
from hf_advsoup.flagship import FlagshipArguments, run_flagship


def main(argv: list[str] | None = None) -> dict:
    """Run the flagship (or one stage of it); return the results dictionary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(FlagshipArguments).parse_args_into_dataclasses(args=argv)
    check_job_locations(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return run_flagship(args, command="python scripts/flagship.py" + (" " + " ".join(argv) if argv else ""))


if __name__ == "__main__":
    run(main, interrupt_hint=RESUME_HINT)
