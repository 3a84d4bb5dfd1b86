"""The reproduction study: small versions of the experiments behind the claims of "Revisiting adapters with
adversarial training" (Rebuffi, Croce & Gowal, ICLR 2023), run on a CPU and written up as a model card.

- :mod:`~hf_advsoup.study.presets`: one :class:`StudyPreset` per data set (``fashion_mnist``, ``digits``).
- :mod:`~hf_advsoup.study.sections`: what each table needs and compares; :mod:`~hf_advsoup.study.specs` the runs
  and measured numbers they are made of.
- :mod:`~hf_advsoup.study.engine`: :func:`run_study` plans, runs (in parallel, reusing finished jobs) and adds
  second seeds; :mod:`~hf_advsoup.study.jobs` the scheduler, :mod:`~hf_advsoup.study.tasks` what a job does,
  :mod:`~hf_advsoup.study.data` the saved splits.
- :mod:`~hf_advsoup.study.rules`: the choices (epsilon, alpha) and the seed-noise rule;
  :mod:`~hf_advsoup.study.report`: the card.

``scripts/reproduce.py`` is the command line: ``python scripts/reproduce.py --dataset fashion_mnist``.
"""

from .engine import Study, StudyArguments, rewrite_report, run_study
from .presets import STUDY_PRESETS, ModelShape, StudyPreset, TrainingAttack, TrainingRecipe, get_study_preset

__all__ = ["STUDY_PRESETS", "ModelShape", "Study", "StudyArguments", "StudyPreset", "TrainingAttack", "TrainingRecipe",
           "get_study_preset", "rewrite_report", "run_study"]
