"""Evaluating per-image defences (``beta="auto"``, the ``mix`` family) next to fixed soups and ensembles, against
attacks that know about them.

A selector is a detector of adversarial examples, and a mixture is a bet on robust mode's confidence; both look strong
against attacks that ignore them and may not be (Carlini & Wagner 2017; Tramer et al., "On adaptive attacks to
adversarial example defenses", NeurIPS 2020). So every system (:class:`System`) is attacked several ways, and its
robust accuracy is the **per-image worst case** over all of them:

(a) ``transfer``: the attack on robust mode (``beta=0``), its images then classified by the system;
(b) ``end_to_end``: the gradient attack on the whole system's output (its logits; for the mixtures, the log of the
    mixed probabilities) -- with the ``report`` preset, PGD-40 and then MultiTargeted towards 9 classes with the
    targeted margin loss on that output;
(c) ``toward_clean_<lambda>`` (auto and mix): (b) with the margin loss plus ``lambda`` times a score of "clean mode
    decides": ``log(beta)`` of the selector, the log of robust mode's (transformed) doubt for a mixture
    (:func:`~.systems.push_toward_clean`): the attack maximises the loss while driving the system toward clean mode;
(s) ``surrogate`` (mix): (b) through MixedNUTS' attack surrogate, whose gradient partly bypasses the saturating
    transform;
(d) ``autoattack``: AutoAttack (standard, or a named subset) on the whole system.

Fixed soups and ensembles get (a), (b) and (d) on the same images; (c) and (s) need what they attack.
:class:`SystemsEvaluation` compares each auto/mix system with the fixed-soup curve: the most accurate fixed soup at
equal or higher worst-case robust accuracy, and the paired 95% interval of the clean-accuracy difference
(:mod:`hf_advsoup.intervals`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import AttackConfig, Normalization, attack, attack_mode, format_epsilon
from ..configuration_advsoup import validate_beta
from ..evaluation import PerExampleAccuracies
from ..intervals import Accuracy, decide, pack_flags, paired_difference
from ..modeling_advsoup import AdvSoupViTForImageClassification
from ..soups import ForwardCounter, SoupEnsemble, build_attack, collect_examples, describe_threat_model, iter_batches
from ..soups import threat_model_of
from .mixing import MixConfig, MixedModes
from .systems import AutoSoupClassifier

__all__ = ["FAMILIES", "AdaptiveAttack", "AutoEvaluationArguments", "AutoSoupEvaluation", "AutoSoupResult",
           "System", "SystemsEvaluation", "adaptive_attacks", "evaluate_auto_soup", "evaluate_systems"]

logger = logging.getLogger(__name__)

FAMILIES = ("auto", "mix", "soup", "ensemble")
FORWARDS = {"soup": 1.0, "ensemble": 2.0, "mix": 2.0}
"""Forwards per image of each family (auto: ``(layers + selector_layers) / layers``)."""
ABOVE_THE_CURVE = Fraction(2, 100)
"""An auto/mix system lies above the fixed-soup curve when it is at least 2 points more accurate on clean images than
the most accurate fixed soup at equal or higher worst-case robust accuracy, with a paired 95% interval above 0."""


def _default_clean_push() -> list[float]:
    return [1.0, 10.0]


@dataclass
class AutoEvaluationArguments:
    """The adaptive evaluation of ``beta="auto"`` and of the ``mix`` family (:func:`evaluate_systems`;
    ``scripts/evaluate_soups.py --auto``). Radius and steps are the soup sweep's (``--epsilon``, ``--attack_steps``)."""

    auto: bool = field(
        default=False,
        metadata={"help": "Also evaluate beta='auto' (the model's soup selector) against adaptive attacks: (a) the "
                  "attack on robust mode transferred, (b) end to end through the selector, (c) end to end pushing the "
                  "selector toward clean mode, (d) AutoAttack end to end; robust accuracy is the per-example worst "
                  "case. Fixed soups are attacked the same way on the same examples. Writes auto_results.*."},
    )
    auto_attack: str = field(
        default="pgd40",
        metadata={"help": "Gradient attack preset of (a), (b), (c) and (s) (default pgd40, the paper's PGD-40; "
                  "'report' adds MultiTargeted towards 9 classes; (c) uses the margin loss)."},
    )
    auto_clean_push: list[float] = field(
        default_factory=_default_clean_push,
        metadata={"help": "Weights lambda of attack (c), one run each: maximise margin + lambda * (the system's "
                  "score of clean mode deciding). Default: 1 and 10. Empty to skip (c) (not recommended)."},
    )
    auto_autoattack: bool = field(
        default=True,
        metadata={"help": "Run (d), AutoAttack (needs pyautoattack) on the whole selected model and on each fixed "
                  "soup. Costly: thousands of forward passes per robust example."},
    )
    auto_autoattack_attacks: list[str] = field(
        default_factory=list,
        metadata={"help": "Run only these AutoAttack attacks in (d) (e.g. apgd-ce apgd-t; a weaker, cheaper "
                  "evaluation, named in the report). Default: the standard version (APGD-CE, APGD-T, FAB-T, Square)."},
    )
    auto_fixed_betas: list[float] | None = field(
        default=None,
        metadata={"help": "Fixed soups attacked with the same attacks on the same examples, for the comparison. "
                  "Default: the sweep's --betas."},
    )
    auto_mix: list[str] = field(
        default_factory=list,
        metadata={"help": "Mixtures of the two modes' probabilities to evaluate beside auto, each "
                  "'scale,power,bias,alpha' (MixedNUTS' transform of robust mode's logits, then the mixing weight; "
                  "docs/selection.md; choose them on validation with scripts/choose_mix.py). Two forwards each."},
    )

    def __post_init__(self):
        if self.auto_fixed_betas is not None:
            self.auto_fixed_betas = [validate_beta(b) for b in self.auto_fixed_betas]
        self.auto_clean_push = [float(v) for v in self.auto_clean_push]
        if any(not math.isfinite(v) or v <= 0 for v in self.auto_clean_push):
            raise ValueError(f"auto_clean_push values must be finite and > 0, got {self.auto_clean_push}.")
        if self.auto_attack == "autoattack":
            raise ValueError("auto_attack is the gradient attack of (a)-(c) (e.g. pgd40); AutoAttack is (d), "
                             "--auto_autoattack.")
        self.mix_configs()  # a malformed --auto_mix fails here, before any work

    def mix_configs(self) -> list[MixConfig]:
        configs = []
        for text in self.auto_mix:
            parts = [p for p in str(text).replace(" ", "").split(",") if p]
            try:
                values = [float(p) for p in parts]
            except ValueError:
                values = []
            if len(values) != 4:
                raise ValueError(f"--auto_mix takes 'scale,power,bias,alpha' (four numbers), got {text!r}.")
            configs.append(MixConfig(*values))
        return configs


@dataclass(frozen=True)
class AdaptiveAttack:
    """One attack of the adaptive evaluation: ``key`` (``transfer``, ``end_to_end``, ``toward_clean_<lambda>``,
    ``surrogate``, ``autoattack``), a human ``label``, the :class:`~hf_advsoup.attacks.AttackConfig`, ``clean_push``
    (the ``lambda`` of (c), else 0), and the system ``families`` it applies to."""

    key: str
    label: str
    config: AttackConfig
    clean_push: float = 0.0
    families: tuple[str, ...] = FAMILIES

    @property
    def needs_selector(self) -> bool:
        return self.key.startswith("toward_clean")


def adaptive_attacks(args: AutoEvaluationArguments, *, epsilon: float | str | None = None,
                     steps: int | None = None, surrogate: bool | None = None) -> list[AdaptiveAttack]:
    """The attacks of :func:`evaluate_systems` for ``args``, at radius ``epsilon`` (pixel units; default the
    preset's) with ``steps`` (default the preset's); ``surrogate``: include (s) (default: when ``args.auto_mix``
    names mixtures)."""
    gradient = build_attack(args.auto_attack, epsilon=epsilon, steps=steps)
    attacks = [
        AdaptiveAttack("transfer", f"(a) transfer from robust mode, {args.auto_attack}", gradient),
        AdaptiveAttack("end_to_end", f"(b) end to end, {args.auto_attack}", gradient),
    ]
    margin = dataclasses.replace(gradient, loss="margin")
    for weight in args.auto_clean_push:
        attacks.append(AdaptiveAttack(f"toward_clean_{weight:g}",
                                      f"(c) toward clean mode, lambda={weight:g}, {args.auto_attack} margin", margin,
                                      clean_push=weight, families=("auto", "mix")))
    if args.auto_mix if surrogate is None else surrogate:
        attacks.append(AdaptiveAttack("surrogate", f"(s) MixedNUTS' surrogate gradient, {args.auto_attack}", gradient,
                                      families=("mix",)))
    if args.auto_autoattack:
        autoattack = build_attack("autoattack", epsilon=epsilon)
        name = "AutoAttack standard"
        if args.auto_autoattack_attacks:
            autoattack = dataclasses.replace(autoattack, autoattack_version="custom",
                                             autoattack_attacks=list(args.auto_autoattack_attacks))
            name = f"AutoAttack {'+'.join(args.auto_autoattack_attacks)}"
        attacks.append(AdaptiveAttack("autoattack", f"(d) {name}, end to end", autoattack))
    return attacks


@dataclass(frozen=True)
class System:
    """A classifier under evaluation: ``family`` ``"auto"`` (the selector), ``"mix"`` (a :class:`MixConfig`),
    ``"soup"`` or ``"ensemble"`` (at ``beta``)."""

    family: str
    beta: float | None = None
    mix: MixConfig | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown system family {self.family!r}; choose one of {', '.join(FAMILIES)}.")
        if self.family in ("soup", "ensemble") and self.beta is None:
            raise ValueError(f"A {self.family} needs a beta.")
        if self.family == "ensemble" and not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"An ensemble needs 0 <= beta <= 1 (a probability average), got beta={self.beta}.")
        if self.family == "mix" and self.mix is None:
            raise ValueError("A mix system needs its MixConfig.")

    @property
    def name(self) -> str:
        if self.family == "auto":
            return "auto"
        if self.family == "mix":
            return self.mix.name
        return f"{self.family}_{self.beta:g}"

    def module(self, model: AdvSoupViTForImageClassification, attack_spec: AdaptiveAttack | None = None
               ) -> tuple[nn.Module, dict[str, Any]]:
        """``(module, forward_kwargs)`` that an attack differentiates (and that classifies, without
        ``attack_spec``)."""
        push = attack_spec.clean_push if attack_spec is not None else 0.0
        if self.family == "auto":
            return AutoSoupClassifier(model, clean_push=push), {}
        if self.family == "mix":
            surrogate = attack_spec is not None and attack_spec.key == "surrogate"
            return MixedModes(model, self.mix, surrogate=surrogate, clean_push=push), {}
        if self.family == "ensemble":
            return SoupEnsemble(model, self.beta), {}
        return model, {"beta": self.beta}

    def forwards(self, model: AdvSoupViTForImageClassification) -> float:
        if self.family == "auto":
            return (model.config.num_hidden_layers + model.config.selector_layers) / model.config.num_hidden_layers
        return FORWARDS[self.family]


@dataclass
class AutoSoupResult(PerExampleAccuracies):
    """Per-example outcome for one system on the evaluated examples (boolean tensors of shape ``(num_examples,)``,
    CPU). An example is robust to an attack when it is classified correctly clean and under the attack
    (misclassified clean examples are not attacked); ``worst_case_correct`` is the AND over every attack run, so it
    never increases when attacks are added."""

    name: str
    beta: float | None
    clean_correct: torch.Tensor
    attack_correct: dict[str, torch.Tensor]
    mean_beta: dict[str, float] = field(default_factory=dict)
    forward_passes: dict[str, int] = field(default_factory=dict)
    family: str = "soup"
    mix: dict[str, float] | None = None
    forwards: float = 1.0

    @property
    def worst_case_correct(self) -> torch.Tensor:
        worst = self.clean_correct.clone()
        for correct in self.attack_correct.values():
            worst &= correct
        return worst

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        clean, worst = Accuracy.of(self.clean_correct), Accuracy.of(self.worst_case_correct)
        out = {"name": self.name, "family": self.family, "beta": self.beta, "mix": self.mix,
               "forwards_per_image": self.forwards, "clean_accuracy": self.clean_accuracy,
               "clean_accuracy_interval_95": list(clean.interval), "robust_accuracy": self.robust_accuracy,
               "worst_case_robust_accuracy": self.robust_accuracy,
               "worst_case_robust_accuracy_interval_95": list(worst.interval),
               "num_examples": int(self.clean_correct.numel()), "attack_accuracies": self.attack_accuracies,
               "attacks": list(self.attack_correct), "mean_beta": self.mean_beta,
               "forward_passes": self.forward_passes}
        if per_example:
            out["outcomes"] = {"clean": pack_flags(self.clean_correct), "worst_case": pack_flags(self.worst_case_correct),
                               **{k: pack_flags(v) for k, v in self.attack_correct.items()}}
        return out


@dataclass
class SystemsEvaluation:
    """The adaptive evaluation of several systems on the same examples (:func:`evaluate_systems`).

    ``results`` follow the systems' order; :meth:`comparison` places each auto/mix system against the fixed-soup
    curve; :meth:`to_markdown` / :meth:`save` write the table.
    """

    dataset: str
    num_examples: int
    attacks: list[dict[str, Any]]
    results: list[AutoSoupResult]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def auto(self) -> AutoSoupResult:
        """The first per-image defence (the selector when evaluated)."""
        return next(r for r in self.results if r.family in ("auto", "mix"))

    @property
    def fixed(self) -> list[AutoSoupResult]:
        return [r for r in self.results if r.family == "soup"]

    def against_the_curve(self, result: AutoSoupResult) -> dict[str, Any]:
        """``result`` against the fixed-soup curve: the most accurate fixed soup whose worst-case robust accuracy is
        at least ``result``'s (counts of the same images), and the paired difference of clean accuracy with its 95%
        interval; ``above_the_curve`` when that difference is at least 2 points with the interval above 0. ``None``
        for the soup when no fixed soup is that robust (then ``result`` is more robust than the whole curve)."""
        robust = int(result.worst_case_correct.sum())
        matching = [r for r in self.fixed if int(r.worst_case_correct.sum()) >= robust]
        out: dict[str, Any] = {"name": result.name, "clean_accuracy": result.clean_accuracy,
                               "worst_case_robust_accuracy": result.robust_accuracy}
        if not matching:
            out.update(best_fixed=None, above_the_curve=None,
                       note="more robust than every fixed soup (no soup on the curve to compare with)")
            return out
        best = max(matching, key=lambda r: (int(r.clean_correct.sum()), int(r.worst_case_correct.sum())))
        difference = paired_difference(result.clean_correct, best.clean_correct)
        robust_difference = paired_difference(result.worst_case_correct, best.worst_case_correct)
        above = difference.difference >= ABOVE_THE_CURVE and decide(difference, 0, "above") == "reproduced"
        out.update(best_fixed={"name": best.name, "beta": best.beta, "clean_accuracy": best.clean_accuracy,
                               "worst_case_robust_accuracy": best.robust_accuracy},
                   clean_difference=difference.to_dict(), robust_difference=robust_difference.to_dict(),
                   above_the_curve=bool(above))
        return out

    def comparison(self) -> dict[str, Any]:
        """Each auto/mix system against the fixed-soup curve (:meth:`against_the_curve`), and the legacy summary of
        the first one (``most_robust_fixed_at_auto_clean``, ``best_fixed_by_mean``, ``dominating_fixed``)."""
        defences = [r for r in self.results if r.family in ("auto", "mix")]
        out: dict[str, Any] = {"against_the_curve": [self.against_the_curve(r) for r in defences]} if self.fixed else {}
        if not defences:
            return out
        auto = defences[0]
        out["auto"] = {"clean_accuracy": auto.clean_accuracy, "robust_accuracy": auto.robust_accuracy,
                       "mean_accuracy": (auto.clean_accuracy + auto.robust_accuracy) / 2}
        if not self.fixed:
            return out
        accurate = [r for r in self.fixed if int(r.clean_correct.sum()) >= int(auto.clean_correct.sum())]
        best = max(accurate, key=lambda r: (r.robust_accuracy, r.clean_accuracy), default=None)
        out["most_robust_fixed_at_auto_clean"] = None if best is None else {
            "beta": best.beta, "clean_accuracy": best.clean_accuracy, "robust_accuracy": best.robust_accuracy}
        by_mean = max(self.fixed, key=lambda r: (r.clean_accuracy + r.robust_accuracy, r.robust_accuracy))
        out["best_fixed_by_mean"] = {"beta": by_mean.beta, "clean_accuracy": by_mean.clean_accuracy,
                                     "robust_accuracy": by_mean.robust_accuracy,
                                     "mean_accuracy": (by_mean.clean_accuracy + by_mean.robust_accuracy) / 2}
        out["dominating_fixed"] = [r.beta for r in self.fixed
                                   if int(r.clean_correct.sum()) >= int(auto.clean_correct.sum())
                                   and int(r.worst_case_correct.sum()) >= int(auto.worst_case_correct.sum())]
        return out

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        return {"dataset": self.dataset, "num_examples": self.num_examples, "attacks": self.attacks,
                "settings": self.settings, "comparison": self.comparison(),
                "results": [r.to_dict(per_example) for r in self.results]}

    def to_markdown(self) -> str:
        """Accuracy (%) per system: clean, each attack, worst case; then each defence against the curve."""
        keys = [a["key"] for a in self.attacks]
        header = ["system", "forwards", "clean"] + [a["label"] for a in self.attacks] + ["worst case",
                                                                                         "mean beta (clean)"]
        lines = [f"### Per-image defences vs fixed soups on {self.dataset} ({self.num_examples} examples)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for result in self.results:
            accuracies = result.attack_accuracies
            cells = [result.name, f"{result.forwards:.2g}", f"{100 * result.clean_accuracy:.2f}"]
            cells += [f"{100 * accuracies[k]:.2f}" if k in accuracies else "-" for k in keys]
            cells += [f"**{100 * result.robust_accuracy:.2f}**",
                      f"{result.mean_beta['clean']:.3f}" if "clean" in result.mean_beta else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        threat = self.settings.get("threat_model")
        if threat:
            lines += ["", f"Threat model: {describe_threat_model(threat)}. An example counts as robust when it is "
                      "classified correctly clean and under every attack run on its system (worst case, per "
                      "example)."]
        for result in self.results:
            under = {k: v for k, v in result.mean_beta.items() if k != "clean"}
            if under:
                lines += ["", f"Mean beta the selector of {result.name} gave the attacked images: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in under.items()) + "."]
        comparison = self.comparison()
        lines.append("")
        for entry in comparison.get("against_the_curve", []):
            best = entry.get("best_fixed")
            if best is None:
                lines.append(f"- {entry['name']}: {entry['note']}.")
                continue
            d = entry["clean_difference"]
            lines.append(f"- {entry['name']} (clean {100 * entry['clean_accuracy']:.2f}%, worst case "
                         f"{100 * entry['worst_case_robust_accuracy']:.2f}%) vs the most accurate fixed soup at least "
                         f"as robust, {best['name']} (clean {100 * best['clean_accuracy']:.2f}%, worst case "
                         f"{100 * best['worst_case_robust_accuracy']:.2f}%): clean accuracy {d['text']} (paired 95% "
                         f"interval): {'**above** the fixed-soup curve' if entry['above_the_curve'] else 'not above the fixed-soup curve'}.")
        if "most_robust_fixed_at_auto_clean" in comparison:
            best = comparison["most_robust_fixed_at_auto_clean"]
            auto = self.auto
            if best is not None:
                verdict = "more" if auto.robust_accuracy > best["robust_accuracy"] else "not more"
                lines.append(f"- The most robust fixed soup at least as accurate on clean images as {auto.name}: "
                             f"beta={best['beta']:g} (clean {100 * best['clean_accuracy']:.2f}%, robust "
                             f"{100 * best['robust_accuracy']:.2f}%); {auto.name} (clean "
                             f"{100 * auto.clean_accuracy:.2f}%, robust {100 * auto.robust_accuracy:.2f}%) is {verdict} "
                             "robust.")
            else:
                lines.append(f"- No fixed soup reaches {auto.name}'s clean accuracy ({100 * auto.clean_accuracy:.2f}%).")
            by_mean = comparison["best_fixed_by_mean"]
            lines.append(f"- Best fixed soup by mean of clean and robust accuracy: beta={by_mean['beta']:g} "
                         f"({100 * by_mean['mean_accuracy']:.2f}%); {auto.name}: "
                         f"{100 * comparison['auto']['mean_accuracy']:.2f}%.")
            if comparison.get("dominating_fixed"):
                lines.append(f"- Fixed soups at least as good as {auto.name} on both: beta=" + ", ".join(
                    f"{b:g}" for b in comparison["dominating_fixed"]) + ".")
        return "\n".join(lines) + "\n"

    def save(self, output_dir: str | Path, stem: str = "auto_results") -> dict[str, Path]:
        """Write ``{stem}.json`` (with per-example outcomes) and ``{stem}.md`` into ``output_dir``."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        paths = {"auto_json": output_dir / f"{stem}.json", "auto_markdown": output_dir / f"{stem}.md"}
        paths["auto_json"].write_text(json.dumps(self.to_dict(per_example=True), indent=2) + "\n", encoding="utf-8")
        paths["auto_markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return paths


AutoSoupEvaluation = SystemsEvaluation
"""The evaluation of ``beta="auto"`` next to fixed soups (the earlier name of :class:`SystemsEvaluation`)."""


def evaluate_systems(
    model: AdvSoupViTForImageClassification,
    data,
    systems: Sequence[System],
    args: AutoEvaluationArguments | None = None,
    *,
    normalization: Normalization,
    epsilon: float | str | None = None,
    attack_steps: int | None = None,
    dataset_name: str = "eval",
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    progress: bool = True,
    attacks: Sequence[AdaptiveAttack] | None = None,
) -> SystemsEvaluation:
    """Clean and worst-case robust accuracy of each of ``systems`` under the adaptive attacks of ``args`` that apply
    to its family, on the same examples.

    Args:
        model: a co-trained model (with a trained selector when ``auto`` is among the systems; never changed).
        data: ``(pixel_values, labels)`` tensors or an iterable of batches (:data:`hf_advsoup.soups.EvalData`);
            ``pixel_values`` normalized by the model's image processor.
        systems: what to evaluate (:class:`System`), e.g. ``[System("auto"), System("mix", mix=MixConfig(...)),
            System("soup", 0.5), System("ensemble", 0.5)]``.
        args: which attacks (:class:`AutoEvaluationArguments`; default: its defaults).
        normalization: the processor's mean/std (attacks work in [0, 1] pixel space).
        epsilon, attack_steps: radius (pixel units, ``"8/255"`` accepted) and steps; default: the presets'.
        max_examples: evaluate the first ``max_examples`` examples (default: all).
        seed: every (system, attack) pair starts from a generator seeded with it, so random starts are the same
            across systems.
        attacks: the attacks, overriding those of ``args`` (:func:`adaptive_attacks`), e.g. to run an expensive one
            on some families only (each :class:`AdaptiveAttack` names its ``families``); the first ``transfer`` and
            ``end_to_end`` of the list are (a) and the reference threat model.
    """
    args = args or AutoEvaluationArguments()
    systems = list(systems)
    if not systems:
        raise ValueError("evaluate_systems needs at least one system.")
    if any(s.family == "auto" for s in systems) and getattr(model, "selector", None) is None:
        raise ValueError("beta='auto' needs a model with a trained soup selector: train one with "
                         "scripts/train_selector.py.")
    attacks = list(attacks) if attacks is not None else adaptive_attacks(args, epsilon=epsilon, steps=attack_steps)
    if not any(a.key == "transfer" for a in attacks):
        raise ValueError("The attacks must include (a) 'transfer' (the attack on robust mode, transferred).")
    pixel_values, labels = collect_examples(data, max_examples, batch_size)
    device = model.device
    gen_device = device if device.type != "mps" else torch.device("cpu")
    generators: dict[tuple[str, str], torch.Generator] = {}

    def generator(target: str, key: str) -> torch.Generator:
        if (target, key) not in generators:
            generators[(target, key)] = torch.Generator(device=gen_device).manual_seed(seed)
        return generators[(target, key)]

    def predict(system: System, images: torch.Tensor):
        with attack_mode(model), torch.no_grad():
            if system.family == "auto":
                out = model(pixel_values=images, beta="auto")
                return out.logits.argmax(-1), out.beta.float()
            module, kwargs = system.module(model)
            logits = module(images, **kwargs)
            return getattr(logits, "logits", logits).argmax(-1), None

    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"Two systems have the same name: {names}.")
    clean_parts: dict[str, list[torch.Tensor]] = {s.name: [] for s in systems}
    attack_parts = {s.name: {a.key: [] for a in attacks if s.family in a.families} for s in systems}
    beta_sums: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
    passes = {s.name: dict.fromkeys(attack_parts[s.name], 0) for s in systems}
    transfer = next(a for a in attacks if a.key == "transfer")
    num_batches = -(-pixel_values.shape[0] // batch_size)
    for x, y in tqdm(iter_batches((pixel_values, labels), batch_size), total=num_batches, disable=not progress,
                     desc="adaptive evaluation", unit="batch"):
        x, y = x.to(device), y.to(device).long()
        # (a) The attack on robust mode does not depend on the attacked system: made once per batch.
        transferred = attack(model, x, y, transfer.config, normalization=normalization,
                             forward_kwargs={"beta": 0.0}, generator=generator("robust mode", transfer.key))
        for system in systems:
            prediction, selected = predict(system, x)
            clean = prediction == y
            clean_parts[system.name].append(clean.cpu())
            if selected is not None:
                _accumulate(beta_sums[system.name], "clean", selected)
            index = clean.nonzero().squeeze(1)
            for spec in attacks:
                if spec.key not in attack_parts[system.name]:
                    continue
                correct = torch.zeros_like(clean)
                if index.numel():
                    if spec.key == "transfer":
                        adversarial = transferred[index]
                    else:
                        module, kwargs = system.module(model, spec)
                        with ForwardCounter(model) as counter:
                            adversarial = attack(module, x[index], y[index], spec.config, normalization=normalization,
                                                 forward_kwargs=kwargs, generator=generator(system.name, spec.key))
                        passes[system.name][spec.key] += counter.count
                    prediction, selected = predict(system, adversarial)
                    correct[index] = prediction == y[index]
                    if selected is not None:
                        _accumulate(beta_sums[system.name], spec.key, selected)
                attack_parts[system.name][spec.key].append(correct.cpu())

    results = []
    for system in systems:
        result = AutoSoupResult(
            name=system.name, beta=system.beta, clean_correct=torch.cat(clean_parts[system.name]),
            attack_correct={key: torch.cat(parts) for key, parts in attack_parts[system.name].items()},
            forward_passes=passes[system.name], family=system.family,
            mix=system.mix.to_dict() if system.mix is not None else None, forwards=system.forwards(model))
        result.mean_beta = {key: total / count for key, (total, count) in beta_sums[system.name].items() if count}
        results.append(result)
    reference = next((a for a in attacks if a.key == "end_to_end"), attacks[0])
    selector = None
    if getattr(model, "selector", None) is not None:
        selector = {"selector_layers": model.config.selector_layers,
                    "selector_hidden_size": model.config.selector_hidden_size,
                    "selector_mode": model.config.selector_mode,
                    "forward_cost": (model.config.num_hidden_layers + model.config.selector_layers)
                    / model.config.num_hidden_layers}
    evaluation = SystemsEvaluation(
        dataset=dataset_name,
        num_examples=int(labels.shape[0]),
        attacks=[{"key": a.key, "label": a.label, "clean_push": a.clean_push, "families": list(a.families),
                  "threat_model": threat_model_of(a.config, a.config.name)} for a in attacks],
        results=results,
        settings={
            "arguments": dataclasses.asdict(args),
            "threat_model": threat_model_of(reference.config, args.auto_attack),
            "epsilon": reference.config.epsilon,
            "epsilon_str": format_epsilon(reference.config.epsilon, reference.config.norm),
            "seed": seed,
            "selector": selector,
            "normalization": dataclasses.asdict(normalization),
        },
    )
    for result in results:
        logger.info("%s on %s (%d examples): clean %.2f%%, worst case %.2f%% (%s)", result.name, dataset_name,
                    evaluation.num_examples, 100 * result.clean_accuracy, 100 * result.robust_accuracy,
                    ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.attack_accuracies.items()))
    return evaluation


def evaluate_auto_soup(
    model: AdvSoupViTForImageClassification,
    data,
    args: AutoEvaluationArguments | None = None,
    *,
    normalization: Normalization,
    epsilon: float | str | None = None,
    attack_steps: int | None = None,
    fixed_betas: Sequence[float] = (),
    dataset_name: str = "eval",
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> SystemsEvaluation:
    """``beta="auto"`` (and the mixtures of ``args.auto_mix``) next to the fixed soups of ``fixed_betas``, under
    the adaptive attacks: :func:`evaluate_systems` with those systems, ``auto`` first."""
    args = args or AutoEvaluationArguments()
    if getattr(model, "selector", None) is None:
        raise ValueError("evaluate_auto_soup needs a model with a trained soup selector (beta='auto'): train one with "
                         "scripts/train_selector.py.")
    systems = ([System("auto")] + [System("mix", mix=config) for config in args.mix_configs()]
               + [System("soup", validate_beta(b)) for b in fixed_betas])
    evaluation = evaluate_systems(model, data, systems, args, normalization=normalization, epsilon=epsilon,
                                  attack_steps=attack_steps, dataset_name=dataset_name, batch_size=batch_size,
                                  max_examples=max_examples, seed=seed, progress=progress)
    for result in evaluation.results:  # the names the fixed soups had
        if result.family == "soup":
            result.name = f"beta={result.beta:g}"
    return evaluation


def _accumulate(sums: dict[str, list[float]], key: str, values: torch.Tensor) -> None:
    total = sums.setdefault(key, [0.0, 0])
    total[0] += float(values.sum())
    total[1] += int(values.numel())
