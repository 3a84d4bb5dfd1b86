"""Adversarial model soups in practice: beta sweeps, ensembles, the 2-D token landscape, the two-network baseline and
the selection of a soup (Rebuffi et al., ICLR 2023, Section 5.2, Figures 4, 5, 8, Tables 3, 7, 8, 9).

Everything here is evaluation: the weights of the model under test are never changed and never copied. A soup is a
``beta`` passed to :meth:`~hf_advsoup.AdvSoupViTForImageClassification.forward`, so a clean-accuracy sweep over 11
betas reads the data once and costs 11 forward passes per image (plus 2 for all the ensembles together, which reuse
the clean-mode and robust-mode probabilities). Robust accuracy calls the project's one attack implementation
(:mod:`hf_advsoup.attacks`): soups are attacked at their own ``beta``, ensembles end to end through
:class:`SoupEnsemble` (the attack sees the log of the averaged probabilities).

Every number is a :class:`SoupRecord`: one accuracy with everything needed to reproduce it (data set, family,
beta, metric, examples used, forward passes, threat model). :class:`SoupEvaluation` holds the records and writes
them as JSON, CSV and a markdown table; :mod:`hf_advsoup.plots` draws them.

Conventions (METHOD.md): ``beta=1`` is clean mode, ``beta=0`` robust mode; accuracies are fractions in ``[0, 1]``;
epsilon is in pixel units of ``[0, 1]`` images.

Where things live (one module per concern; every name is importable from ``hf_advsoup.soups`` as before):

* :mod:`.arguments`: :class:`SoupEvaluationArguments` and the default beta grids;
* :mod:`.records`: :class:`SoupRecord`, :class:`SoupEvaluation` (JSON, CSV, markdown), threat-model descriptions;
* :mod:`.data`: evaluation batches, eval mode, forward counting, logits restricted to a data set's classes;
* :mod:`.ensembles`: the ensemble of the two modes;
* :mod:`.threat_model`: the attack of a robust sweep and its JSON description;
* :mod:`.sweeps`: clean and robust sweeps over beta;
* :mod:`.two_networks`: the Table 9 baseline (all weights of two networks interpolated);
* :mod:`.choice`: choosing a soup from a sweep;
* :mod:`.driver`: :func:`evaluate_soups`, all of the above in one call.
"""

from .arguments import DEFAULT_BETAS, DEFAULT_LANDSCAPE_BETAS, SoupEvaluationArguments
from .choice import best_soup_by_mean_accuracy, most_robust_soup, select_soups
from .data import EvalData, ForwardCounter, collect_examples, iter_batches, restrict_logits
from .driver import evaluate_soups
from .ensembles import SoupEnsemble, ensemble_probabilities
from .records import COMPUTE, FAMILIES, METRICS, SoupEvaluation, SoupRecord, describe_threat_model
from .sweeps import clean_sweep, robust_accuracy, robust_sweep
from .threat_model import build_attack, threat_model_of
from .two_networks import floating_state_dict, independent_soup_sweep, interpolate_weights_

__all__ = [
    "COMPUTE",
    "DEFAULT_BETAS",
    "DEFAULT_LANDSCAPE_BETAS",
    "EvalData",
    "FAMILIES",
    "METRICS",
    "ForwardCounter",
    "SoupEnsemble",
    "SoupEvaluation",
    "SoupEvaluationArguments",
    "SoupRecord",
    "best_soup_by_mean_accuracy",
    "build_attack",
    "clean_sweep",
    "collect_examples",
    "describe_threat_model",
    "ensemble_probabilities",
    "evaluate_soups",
    "floating_state_dict",
    "independent_soup_sweep",
    "interpolate_weights_",
    "iter_batches",
    "most_robust_soup",
    "restrict_logits",
    "robust_accuracy",
    "robust_sweep",
    "select_soups",
    "threat_model_of",
]
