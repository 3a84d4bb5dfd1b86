"""The sections of the study: which runs each one needs, which differences it compares, and the numbers it reports.

A section (:class:`Section`) declares its runs and measured numbers (:mod:`hf_advsoup.study.specs`), its
:class:`~hf_advsoup.study.specs.Comparison` list (the differences the card interprets; those under the preset's
threshold get a second seed), and :meth:`Section.collect` turns the finished jobs into the JSON the report renders
(:mod:`hf_advsoup.study.report`). Runs shared by sections (the nominal and adversarial networks, the PGD-2
co-trained token) are one run, trained once.

Adding a section: subclass :class:`Section`, register it in :data:`SECTIONS` (the order is the card's), and add its
renderer to :data:`hf_advsoup.study.report.RENDERERS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..configuration_advsoup import ADAPTER_TYPES
from .rules import choose_alpha, choose_epsilon, pareto_front
from .specs import Comparison, RunResult, RunSpec, SoupResult, TransferResult, epsilon_slug

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Study
    from .jobs import Job
    from .presets import TrainingAttack

__all__ = ["ADAPTERS", "SECTIONS", "Section", "adversarial", "cotraining", "nominal"]

ADAPTERS = tuple(adapter for adapter in ADAPTER_TYPES if adapter != "none")  # Table 1's doubled adapters

# The boundaries of the paper's claims, as fractions of accuracy (stated on the card): each claim is decided by
# whether the 95% interval of its paired difference lies on its side (hf_advsoup.intervals.decide).
WITHIN_4_POINTS = "-1/25"  # Table 1: robust mode "about 4 points" below adversarial training, at most
AS_ACCURATE = "-1/200"  # Table 5: "at least as accurate": not more than 0.5 points below nominal training
ON_PAR_OR_BETTER = "-1/100"  # Table 9: soups on par with or better than ensembles: not more than 1 point below
COLLAPSE_GAP = "1/5"  # Table 9: the two-network soup collapses: at least 20 points below the tokens' soup
ON_PAR = "1/100"  # Table 2: PGD-5 on par with PGD-2: within 1 point either way
SMALL_LOSS = "-1/50"  # Table 2: the reduced-step one-step attacks lose "about 1 point": at most 2 points
SHARED_COLLAPSE = "1/20"  # Table 1: fully shared co-training loses all robustness: at most 5% robust accuracy
ADAPTER_TITLES = {
    "none": "fully shared (no adapter)",
    "cls_token": "doubled classification token",
    "layernorm": "doubled normalization layers",
    "pos_embed": "doubled position embedding",
    "patch_embed": "doubled patch embedder",
}


# ----------------------------------------------------------------------------------------------- the shared runs
def _classes_suffix(classes: tuple[int, ...] | None) -> str:
    return "" if classes is None else f"_classes{classes[0]}-{classes[-1]}"


def nominal(classes: tuple[int, ...] | None = None) -> RunSpec:
    """Nominal training: one network, no attack (alpha = 1)."""
    return RunSpec(f"nominal{_classes_suffix(classes)}", "Nominal training", 1.0, "none", classes=classes)


def adversarial(epsilon: str, attack: str = "pgd2", classes: tuple[int, ...] | None = None) -> RunSpec:
    """Adversarial training: one network, attacked images only (alpha = 0)."""
    return RunSpec(f"adversarial_{epsilon_slug(epsilon)}{_classes_suffix(classes)}",
                   f"Adversarial training ({attack.upper().replace('PGD', 'PGD-')})", 0.0, "none", epsilon=epsilon,
                   train_attack=attack, classes=classes)


def cotraining(epsilon: str, adapter: str = "cls_token", alpha: float = 0.5, attack: str = "pgd2",
               step_over_epsilon: float | None = None, classes: tuple[int, ...] | None = None,
               extra_argv: tuple[str, ...] = ()) -> RunSpec:
    """Co-training (the paper's Eq. 2) with ``adapter`` doubled; the name spells every setting that differs from the
    default (cls_token, alpha 0.5, PGD-2)."""
    parts = [adapter if adapter != "none" else "shared"]
    if alpha != 0.5:
        parts.append(f"alpha{alpha:g}")
    if attack != "pgd2":
        parts.append(attack)
    if step_over_epsilon is not None:
        parts.append(f"step{step_over_epsilon:g}eps")
    if extra_argv:
        parts.append("-".join(a.lstrip("-") for a in extra_argv))
    parts.append(epsilon_slug(epsilon))
    return RunSpec("_".join(parts) + _classes_suffix(classes), f"Co-training, {ADAPTER_TITLES[adapter]}", alpha,
                   adapter, epsilon=epsilon, train_attack=attack, step_over_epsilon=step_over_epsilon,
                   classes=classes, extra_argv=extra_argv)


# ----------------------------------------------------------------------------------------------- base class
class Section:
    """One table of the card. ``phase`` ``"tuning"`` sections run (at the first seed) before the others, which need
    their choice (the epsilon)."""

    name: str = ""
    title: str = ""
    phase: str = "main"

    def results(self, study: Study) -> list:
        """The measured numbers this section reports (each evaluated at every seed that ran)."""
        return []

    def jobs(self, study: Study, seed: int) -> list[Job]:
        """The jobs that produce this section's numbers at ``seed``."""
        return [job for result in self.results(study) for job in result.jobs(study, seed)]

    def comparisons(self, study: Study) -> list[Comparison]:
        return []

    def collect(self, study: Study) -> dict[str, Any]:
        raise NotImplementedError

    def compared(self, study: Study) -> list[dict[str, Any]]:
        return [study.compared(c) for c in self.comparisons(study)]


def _run_row(study: Study, spec: RunSpec, **extra: Any) -> dict[str, Any]:
    result = RunResult(spec)
    trained = study.result(study.train_job(spec, study.seed)) or {}
    return {"run": spec.name, "setup": spec.title, "adapter": spec.adapter, "alpha": spec.alpha,
            "recipe_epochs": (trained.get("recipe") or {}).get("num_train_epochs"),
            "clean_accuracy": study.stat(result, "clean"), "robust_accuracy": study.stat(result, "robust"),
            "clean_accuracy_robust_mode": study.stat(result, "clean_robust_mode"),
            "collapse": study.collapses(spec), "train_time_s": study.train_times(spec), **extra}


# ----------------------------------------------------------------------------------------------- epsilon
class EpsilonSection(Section):
    """One nominal and one adversarial-training run per radius of the grid, evaluated on the validation split (the
    choice, :func:`~hf_advsoup.study.rules.choose_epsilon`) and on the test split (reported)."""

    name, title, phase = "epsilon", "Choosing epsilon", "tuning"

    def jobs(self, study: Study, seed: int) -> list[Job]:
        jobs = [study.train_job(nominal(), seed)]
        for eps in study.preset.epsilon_grid:
            spec = adversarial(eps, study.preset.recipe.train_attack)
            jobs.append(study.train_job(spec, seed))
            for split in ("validation", "test"):
                jobs += [study.eval_job(nominal(), seed, split, eps), study.eval_job(spec, seed, split, eps)]
        return jobs

    def rows(self, study: Study, split: str) -> list[dict[str, Any]]:
        from ..attacks import parse_epsilon

        rows = []
        for eps in study.preset.epsilon_grid:
            spec = adversarial(eps, study.preset.recipe.train_attack)
            nom = study.result(study.eval_job(nominal(), study.seed, split, eps))
            adv = study.result(study.eval_job(spec, study.seed, split, eps))
            rows.append({"epsilon": eps, "epsilon_value": float(parse_epsilon(eps, "linf")), "run": spec.name,
                         "nominal_clean_accuracy": nom["clean_accuracy_clean_mode"],
                         "nominal_robust_accuracy": nom["robust_accuracy"],
                         "adversarial_clean_accuracy": adv["clean_accuracy_clean_mode"],
                         "adversarial_robust_accuracy": adv["robust_accuracy"]})
        return rows

    def choose(self, study: Study) -> dict[str, Any]:
        p = study.preset
        return choose_epsilon(self.rows(study, "validation"), p.epsilon_max_nominal_robust, p.epsilon_min_clean_ratio)

    def collect(self, study: Study) -> dict[str, Any]:
        return {"validation": self.rows(study, "validation"), "test": self.rows(study, "test"),
                "choice": self.choose(study), "seed": study.seed}


# ----------------------------------------------------------------------------------------------- Table 1
class Table1Section(Section):
    """Table 1: nominal, adversarial, fully shared co-training and co-training with each adapter."""

    name, title = "table1", "Table 1: adapters"

    def specs(self, study: Study) -> list[RunSpec]:
        eps, attack = study.epsilon, study.preset.recipe.train_attack
        return [nominal(), adversarial(eps, attack), cotraining(eps, "none", attack=attack),
                *(cotraining(eps, a, attack=attack) for a in ADAPTERS)]

    def results(self, study: Study) -> list:
        return [RunResult(spec) for spec in self.specs(study)]

    def comparisons(self, study: Study) -> list[Comparison]:
        eps, attack = study.epsilon, study.preset.recipe.train_attack
        token = RunResult(cotraining(eps, attack=attack))
        out = [Comparison("token_vs_adversarial_robust", "robust mode vs adversarial training, robust accuracy",
                          token, RunResult(adversarial(eps, attack)), "robust", "at least", WITHIN_4_POINTS, claim=True),
               Comparison("shared_vs_token_robust", "fully shared vs doubled token, robust accuracy",
                          RunResult(cotraining(eps, "none", attack=attack)), token, "robust", "below")]
        out += [Comparison(f"{a}_vs_token_mean", f"doubled {a} vs doubled token, mean of clean and robust accuracy",
                           RunResult(cotraining(eps, a, attack=attack)), token, "mean") for a in ADAPTERS[1:]]
        return out

    def collect(self, study: Study) -> dict[str, Any]:
        rows = [_run_row(study, spec, num_parameters=study.num_parameters(spec)) for spec in self.specs(study)]
        single = next(r["num_parameters"] for r in rows if r["adapter"] == "none")
        for r in rows:
            r["extra_parameters"] = r["num_parameters"] - single
        return {"rows": rows, "comparisons": self.compared(study)}


# ----------------------------------------------------------------------------------------------- Table 5 claim
class Table5Section(Section):
    """The paper's Table 5 claim: co-training's clean mode is at least as accurate as nominal training, where
    adversarial training costs clean accuracy."""

    name, title = "table5", "The Table 5 claim: clean mode vs nominal training"

    def specs(self, study: Study) -> list[RunSpec]:
        attack = study.preset.recipe.train_attack
        return [nominal(), adversarial(study.epsilon, attack), cotraining(study.epsilon, attack=attack)]

    def results(self, study: Study) -> list:
        return [RunResult(spec) for spec in self.specs(study)]

    def comparisons(self, study: Study) -> list[Comparison]:
        nom, adv, token = (RunResult(s) for s in self.specs(study))
        return [Comparison("clean_mode_vs_nominal_clean", "clean mode vs nominal training, clean accuracy", token, nom,
                           "clean", "at least", AS_ACCURATE, claim=True),
                Comparison("adversarial_vs_nominal_clean", "adversarial vs nominal training, clean accuracy", adv, nom,
                           "clean", "below", claim=True)]

    def collect(self, study: Study) -> dict[str, Any]:
        return {"rows": [_run_row(study, spec) for spec in self.specs(study)], "comparisons": self.compared(study)}


# ----------------------------------------------------------------------------------------------- soups
class SoupsSection(Section):
    """Table 9 / Figure 4: soups of the two tokens vs ensembles of the two modes vs soups of two independently
    trained networks (the nominal and adversarial runs), on the test split, plus the preset's extra points."""

    name, title = "soups", "Table 9 / Figure 4: soups, ensembles and the soup of two networks"

    def points(self, study: Study) -> list[SoupResult]:
        betas = study.preset.soup_betas
        inner = [b for b in betas if 0.0 < b < 1.0]
        return ([SoupResult("soup", b) for b in betas] + [SoupResult("ensemble", b) for b in inner]
                + [SoupResult("independent_soup", b) for b in betas])

    def results(self, study: Study) -> list:
        return self.points(study)

    def middle(self, study: Study) -> float | None:
        inner = [b for b in study.preset.soup_betas if 0.0 < b < 1.0]
        return min(inner, key=lambda b: abs(b - 0.5)) if inner else None

    def comparisons(self, study: Study) -> list[Comparison]:
        out = [Comparison("robust_mode_vs_clean_mode_robust", "robust mode (beta 0) vs clean mode (beta 1), robust "
                          "accuracy", SoupResult("soup", 0.0), SoupResult("soup", 1.0), "robust", claim=True),
               Comparison("clean_mode_vs_robust_mode_clean", "clean mode (beta 1) vs robust mode (beta 0), clean "
                          "accuracy", SoupResult("soup", 1.0), SoupResult("soup", 0.0), "clean", claim=True)]
        out += [Comparison(f"soup_vs_ensemble_{b:g}", f"soup vs ensemble at beta {b:g}, mean of clean and robust "
                           "accuracy", SoupResult("soup", b), SoupResult("ensemble", b), "mean", "at least",
                           ON_PAR_OR_BETTER, claim=True)
                for b in study.preset.soup_betas if 0.0 < b < 1.0]
        mid = self.middle(study)
        if mid is not None:
            out.append(Comparison("soup_vs_two_network_soup", f"soup of the tokens vs soup of two networks at beta "
                                  f"{mid:g}, clean accuracy", SoupResult("soup", mid),
                                  SoupResult("independent_soup", mid), "clean", "at least", COLLAPSE_GAP, claim=True))
        return out

    def collect(self, study: Study) -> dict[str, Any]:
        rows = []
        for beta in study.preset.soup_betas:
            row: dict[str, Any] = {"beta": beta}
            for family in ("soup", "ensemble", "independent_soup"):
                point = SoupResult(family, beta)
                row[family] = {"clean": study.stat(point, "clean"), "robust": study.stat(point, "robust")}
            rows.append(row)
        record = study.result(study.soups_jobs(study.seed)[-1])
        runs = {"cotrained": cotraining(study.epsilon, attack=study.preset.recipe.train_attack).name,
                "nominal": nominal().name, "adversarial": adversarial(study.epsilon, study.preset.recipe.train_attack).name}
        return {"rows": rows, "comparisons": self.compared(study), "runs": runs, "seed": study.seed,
                "extra_points": record["extra_points"], "num_clean_examples": record["num_clean_examples"],
                "num_robust_examples": record["num_robust_examples"], "selection": record["selection"],
                "files": record["files"], "monotone": self.monotone(rows, record["num_clean_examples"],
                                                                    record["num_robust_examples"])}

    @staticmethod
    def monotone(rows: list[dict[str, Any]], n_clean: int, n_robust: int) -> dict[str, bool]:
        """Whether, from beta 1 down to 0, the soups' clean accuracy never rises and their robust accuracy never
        falls, by more than one test image per seed (counts of images, compared exactly)."""
        del n_clean, n_robust  # the counts carry their own totals
        ordered = sorted(rows, key=lambda r: -r["beta"])
        clean = [(r["soup"]["clean"]["correct"], len(r["soup"]["clean"]["by_seed"])) for r in ordered]
        robust = [(r["soup"]["robust"]["correct"], len(r["soup"]["robust"]["by_seed"])) for r in ordered]
        return {"clean_non_increasing": all(b <= a + seeds for (a, seeds), (b, _) in zip(clean, clean[1:])),
                "robust_non_decreasing": all(b >= a - seeds for (a, seeds), (b, _) in zip(robust, robust[1:]))}


# ----------------------------------------------------------------------------------------------- training attacks
class TrainingAttackSection(Section):
    """Table 2: co-training with a doubled classification token under each training attack of the list, with
    catastrophic overfitting detected by the library's rule on the robust accuracy monitored after every epoch.

    The first attack of the list is the reference the others are compared with. Another table of training modes
    (e.g. free co-training vs PGD-2) is another instance with its own name, title and attack list."""

    def __init__(self, name: str = "table2", title: str = "Table 2: the training attack",
                 attacks: tuple[TrainingAttack, ...] | None = None):
        self.name, self.title, self._attacks = name, title, attacks

    def attacks(self, study: Study) -> tuple[TrainingAttack, ...]:
        return self._attacks if self._attacks is not None else study.preset.training_attacks

    def spec(self, study: Study, attack: TrainingAttack) -> RunSpec:
        return cotraining(study.epsilon, attack=attack.preset, step_over_epsilon=attack.step_over_epsilon,
                          extra_argv=attack.extra_argv)

    def results(self, study: Study) -> list:
        return [RunResult(self.spec(study, a)) for a in self.attacks(study)]

    def comparisons(self, study: Study) -> list[Comparison]:
        reference, *others = self.attacks(study)
        base = RunResult(self.spec(study, reference))
        out = []
        for a in others:
            direction, boundary, claim = "above", "0", False  # descriptive: other settings, other modes
            if a.preset == "pgd5" and a.step_over_epsilon is None:
                direction, boundary, claim = "within", ON_PAR, True
            elif a.preset in ("fast_at", "nfgsm") and a.step_over_epsilon is None:
                direction, boundary, claim = "at least", SMALL_LOSS, True
            out.append(Comparison(f"{self.spec(study, a).name}_vs_reference_robust", f"{a.title} vs {reference.title}, "
                                  "robust accuracy", RunResult(self.spec(study, a)), base, "robust", direction,
                                  boundary, claim=claim))
        return out

    def collect(self, study: Study) -> dict[str, Any]:
        from ..attacks import PRESETS, AttackConfig, parse_epsilon

        eps = float(parse_epsilon(study.epsilon, "linf"))
        rows = []
        for attack in self.attacks(study):
            spec = self.spec(study, attack)
            steps = step_over_eps = None
            if attack.preset in PRESETS:  # a training mode of cotrain.py that is no attack preset has neither
                overrides: dict[str, Any] = {"epsilon": study.epsilon}
                if attack.step_over_epsilon is not None:
                    overrides["step_size"] = attack.step_over_epsilon * eps
                config = AttackConfig.from_preset(attack.preset, **overrides)
                steps, step_over_eps = config.steps, float(config.effective_step_size) / eps
            rows.append(_run_row(study, spec, attack=attack.title, preset=attack.preset, steps=steps,
                                 custom_step=attack.step_over_epsilon is not None, step_over_eps=step_over_eps,
                                 monitor=study.monitored(spec, study.seed)))
        return {"rows": rows, "comparisons": self.compared(study), "reference": self.attacks(study)[0].title,
                "plot": f"{self.name}_training_curves.png"}


# ----------------------------------------------------------------------------------------------- alpha
class AlphaSection(Section):
    """Figure 3: co-training at each alpha (1 and 0 are the nominal and adversarial runs), reported on test; the
    Pareto front on the test means; an alpha chosen on validation (:func:`~hf_advsoup.study.rules.choose_alpha`)."""

    name, title = "alpha", "Figure 3: the co-training weight alpha"

    def spec(self, study: Study, alpha: float) -> RunSpec:
        attack = study.preset.recipe.train_attack
        if alpha == 1.0:
            return nominal()
        if alpha == 0.0:
            return adversarial(study.epsilon, attack)
        return cotraining(study.epsilon, alpha=alpha, attack=attack)

    def results(self, study: Study) -> list:
        return [RunResult(self.spec(study, a)) for a in study.preset.alphas]

    def jobs(self, study: Study, seed: int) -> list[Job]:
        jobs = super().jobs(study, seed)
        if seed == study.seed:  # the choice is made on validation, at the first seed
            jobs += [study.eval_job(self.spec(study, a), seed, "validation") for a in study.preset.alphas]
        return jobs

    def comparisons(self, study: Study) -> list[Comparison]:
        upper = sorted((a for a in study.preset.alphas if a >= 0.4), reverse=True)  # the paper: 1 down to 0.4
        out = []
        for high, low in zip(upper, upper[1:]):
            for metric in ("clean", "robust"):
                out.append(Comparison(f"alpha{low:g}_vs_alpha{high:g}_{metric}", f"alpha {low:g} vs alpha {high:g}, "
                                      f"{metric} accuracy", RunResult(self.spec(study, low)),
                                      RunResult(self.spec(study, high)), metric, claim=True))
        return out

    def collect(self, study: Study) -> dict[str, Any]:
        rows, validation = [], []
        for alpha in study.preset.alphas:
            spec = self.spec(study, alpha)
            rows.append(_run_row(study, spec))
            rows[-1]["alpha"] = alpha
            val = study.result(study.eval_job(spec, study.seed, "validation"))
            validation.append({"alpha": alpha, "clean_accuracy": val["clean_accuracy_clean_mode"],
                               "robust_accuracy": val["robust_accuracy"]})
        front = pareto_front({r["alpha"]: (r["clean_accuracy"]["mean"], r["robust_accuracy"]["mean"]) for r in rows})
        choice = choose_alpha(validation) if any(0 < a < 1 for a in study.preset.alphas) else None
        return {"rows": rows, "validation": validation, "pareto_front": front, "choice": choice,
                "comparisons": self.compared(study), "plot": "alpha_sweep.png"}


# ----------------------------------------------------------------------------------------------- transfer
class TransferSection(Section):
    """Table 6: pre-training (nominal, adversarial, co-trained) on the source classes, fine-tuning on the target
    classes (new labels, new head) with each strategy, the co-trained token from robust and from clean mode."""

    name, title = "transfer", "Table 6: transfer"
    COLUMNS = (("Nominal", "nominal", "clean"), ("Adversarial", "adversarial", "robust"),
               ("Co-trained, robust mode", "cotrained", "robust"), ("Co-trained, clean mode", "cotrained", "clean"))

    def sources(self, study: Study) -> dict[str, RunSpec]:
        classes, attack = tuple(study.preset.transfer_source_classes), study.preset.recipe.train_attack
        return {"nominal": nominal(classes), "adversarial": adversarial(study.epsilon, attack, classes),
                "cotrained": cotraining(study.epsilon, attack=attack, classes=classes)}

    def cells(self, study: Study) -> list[TransferResult]:
        sources = self.sources(study)
        return [TransferResult(column, sources[source], token_init, strategy)
                for strategy in study.preset.transfer_strategies for column, source, token_init in self.COLUMNS]

    def results(self, study: Study) -> list:
        return self.cells(study)

    def jobs(self, study: Study, seed: int) -> list[Job]:
        jobs = super().jobs(study, seed)
        if seed == study.seed:  # the pre-trained sources on the source classes' test split (context, one seed)
            jobs += [study.eval_job(spec, seed, "test") for spec in self.sources(study).values()]
        return jobs

    def comparisons(self, study: Study) -> list[Comparison]:
        out = []
        for strategy in study.preset.transfer_strategies:
            cells = {c.column: c for c in self.cells(study) if c.strategy == strategy}
            for co in ("Co-trained, robust mode", "Co-trained, clean mode"):
                for base in ("Nominal", "Adversarial"):
                    out.append(Comparison(f"{strategy}:{co}_vs_{base}", f"fine-tune {strategy}: {co} vs {base}",
                                          cells[co], cells[base], "accuracy", claim=strategy == "all"))
        return out

    def collect(self, study: Study) -> dict[str, Any]:
        pretrain = {}
        for label, spec in self.sources(study).items():
            ev = study.result(study.eval_job(spec, study.seed, "test"))
            pretrain[label] = {"run": spec.name, "clean_accuracy": ev["clean_accuracy_clean_mode"],
                               "robust_accuracy": ev["robust_accuracy"]}
        cells = [{"strategy": c.strategy, "column": c.column, "source": c.source.name, "token_init": c.token_init,
                  "accuracy": study.stat(c, "accuracy")} for c in self.cells(study)]
        first = study.result(study.transfer_job(self.cells(study)[0], study.seed))
        return {"source_classes": list(study.preset.transfer_source_classes),
                "target_classes": list(study.preset.transfer_target_classes),
                "source_names": [study.data.class_names[c] for c in study.preset.transfer_source_classes],
                "target_names": [study.data.class_names[c] for c in study.preset.transfer_target_classes],
                "pretrain": pretrain, "cells": cells, "columns": [c[0] for c in self.COLUMNS],
                "strategies": list(study.preset.transfer_strategies), "recipe": first["recipe"],
                "num_test_examples": first["num_test_examples"], "comparisons": self.compared(study)}


# ----------------------------------------------------------------------------------------------- long horizon
class LongHorizonSection(Section):
    """The collapse claims, on long runs (its own invocation: ``--sections all`` after the study, which reuses every finished job): fully shared co-training
    vs the doubled token (Table 1 / Figure 10) and FAST-AT / N-FGSM at their authors' recommended steps (Table 2), each
    ``long_horizon_epochs`` epochs (10x the optimizer steps of a study run) at each radius of
    ``long_horizon_epsilons``, robust accuracy on validation monitored after every epoch. The verdicts come from those
    curves (the library's collapse rule); a final test evaluation gives each run's end point."""

    name, title, phase = "long_horizon", "Long runs: catastrophic overfitting", "long"
    KINDS = (("shared", "fully shared co-training", "none", "pgd2", None),
             ("token", "doubled classification token (PGD-2)", "cls_token", "pgd2", None),
             ("fast_at", "FAST-AT, Wong et al.'s step (1.25 eps)", "cls_token", "fast_at", 1.25),
             ("nfgsm", "N-FGSM, de Jorge et al.'s step (1 eps)", "cls_token", "nfgsm", 1.0))

    def specs(self, study: Study) -> list[tuple[str, str, RunSpec]]:
        """``(kind, epsilon, spec)`` of every long run."""
        import dataclasses

        # long runs keep a checkpoint per epoch, so that an interrupted invocation continues them
        argv = ("--num_train_epochs", f"{study.preset.long_horizon_epochs:g}", "--save_strategy", "epoch",
                "--save_total_limit", "1")
        return [(kind, eps, dataclasses.replace(cotraining(eps, adapter, attack=attack, step_over_epsilon=step),
                                                name=f"long_{kind}_{epsilon_slug(eps)}", extra_argv=argv))
                for eps in study.preset.long_horizon_epsilons for kind, _, adapter, attack, step in self.KINDS]

    def results(self, study: Study) -> list:
        return [RunResult(spec) for _, _, spec in self.specs(study)]

    def collect(self, study: Study) -> dict[str, Any]:
        titles = {kind: title for kind, title, *_ in self.KINDS}
        rows = []
        for kind, eps, spec in self.specs(study):
            rows.append(_run_row(study, spec, kind=kind, title=titles[kind], epsilon=eps,
                                 monitor=study.monitored(spec, study.seed)))
        record = study.result(study.train_job(self.specs(study)[0][2], study.seed)) or {}
        steps = None
        for entry in reversed(record.get("history", [])):
            if "step" in entry:
                steps = entry["step"]
                break
        return {"rows": rows, "epochs": study.preset.long_horizon_epochs,
                "epsilons": list(study.preset.long_horizon_epsilons), "plot": "long_horizon_curves.png",
                "study_epochs": study.preset.recipe.num_train_epochs, "optimizer_steps": steps}


SECTIONS: dict[str, Section] = {
    section.name: section
    for section in (EpsilonSection(), Table1Section(), Table5Section(), SoupsSection(), TrainingAttackSection(),
                    AlphaSection(), TransferSection(), LongHorizonSection())
}
"""The sections in the card's order. A new table is a new entry (and a renderer in report.RENDERERS)."""
