"""The flagship model: the library's best co-trained model on one data set, its two baselines at the same budget,
an evaluation on the whole test split with intervals, and a folder laid out as its Hub repository.

``scripts/flagship.py`` is the command (docs/flagship.md); :mod:`.preset` holds the settings, :mod:`.engine` the
jobs, :mod:`.tasks` the evaluation jobs, :mod:`.card` the results, card and plots.
"""

from .engine import Flagship, FlagshipArguments, run_flagship
from .preset import FASHION_MNIST_FLAGSHIP, FLAGSHIP_PRESETS, FlagshipPreset, FlagshipRun, System, get_flagship_preset

__all__ = ["FASHION_MNIST_FLAGSHIP", "FLAGSHIP_PRESETS", "Flagship", "FlagshipArguments", "FlagshipPreset",
           "FlagshipRun", "System", "get_flagship_preset", "run_flagship"]
