"""The co-training import path of earlier versions: everything now lives in :mod:`hf_advsoup.training` (one module
per concern: :mod:`~hf_advsoup.training.trainer`, :mod:`~hf_advsoup.training.losses`,
:mod:`~hf_advsoup.training.ema`, :mod:`~hf_advsoup.training.callbacks`, :mod:`~hf_advsoup.training.step_checks`,
:mod:`~hf_advsoup.training.checkpoints`, :mod:`~hf_advsoup.training.randomness`), re-exported here unchanged, so
``from hf_advsoup.trainer import CoTrainer, EMACallback, check_weight_files, resolve_checkpoint`` keeps working.

To replace a name that :class:`~hf_advsoup.training.CoTrainer` uses (e.g. in a test), patch it where it is used:
``hf_advsoup.training.trainer.attack``, not ``hf_advsoup.trainer.attack``.
"""

from transformers import TrainerCallback  # noqa: F401 - re-exported as before (tests subclass it from here)

from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
