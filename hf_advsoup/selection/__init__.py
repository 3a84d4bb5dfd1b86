"""Per-image defences built from the two modes, and their evaluation against attacks that know about them.

The paper ends (appendix E) with "the automatic selection of the right soup for each sample" as future work. Two
designs live here:

- ``beta="auto"``: a soup selector (:class:`~hf_advsoup.modeling_advsoup.AdvSoupSelector`, in the model, remote code)
  gives each image the soup ``beta = sigmoid(score)`` it picks from the tokens after the first
  ``config.selector_layers`` robust-mode blocks. :mod:`.training` trains it with every other weight frozen
  (:class:`SelectorTrainer`): as a detector of the training attack, or against the system it defends (the
  ``composite`` objective of adaptive smoothing).
- the ``mix`` family (:mod:`.mixing`): clean mode's and robust mode's probabilities mixed per image after MixedNUTS'
  nonlinear transform of robust mode's logits, training-free, two forwards.

:mod:`.systems` wraps each as one differentiable classifier, and :mod:`.evaluation` attacks them -- with fixed soups
and ensembles, on the same images -- by every attack they invite, robust accuracy being the per-image worst case
(:func:`evaluate_systems`). What each design can and cannot promise is in docs/selection.md.
"""

from .evaluation import (
    FAMILIES,
    AdaptiveAttack,
    AutoEvaluationArguments,
    AutoSoupEvaluation,
    AutoSoupResult,
    System,
    SystemsEvaluation,
    adaptive_attacks,
    evaluate_auto_soup,
    evaluate_systems,
)
from .mixing import MixConfig, MixedModes, choose_mix, mix_grid, mix_probabilities, robust_logit_map, worst_case_correct
from .systems import AutoSoupClassifier, push_toward_clean
from .training import (
    OBJECTIVES,
    SelectorTrainer,
    SelectorTrainingArguments,
    composite_metrics,
    cotraining_attack_settings,
    selector_metrics,
)

__all__ = [
    "FAMILIES",
    "OBJECTIVES",
    "AdaptiveAttack",
    "AutoEvaluationArguments",
    "AutoSoupClassifier",
    "AutoSoupEvaluation",
    "AutoSoupResult",
    "MixConfig",
    "MixedModes",
    "SelectorTrainer",
    "SelectorTrainingArguments",
    "System",
    "SystemsEvaluation",
    "adaptive_attacks",
    "choose_mix",
    "composite_metrics",
    "cotraining_attack_settings",
    "evaluate_auto_soup",
    "evaluate_systems",
    "mix_grid",
    "mix_probabilities",
    "push_toward_clean",
    "robust_logit_map",
    "selector_metrics",
    "worst_case_correct",
]
