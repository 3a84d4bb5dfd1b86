"""The study's card: setup, one table per section, the plots, sentences and a verdict per paper claim -- all built
from ``results.json`` (never typed by hand), so ``--report_only`` renders the same card again.

Each section has a renderer in :data:`RENDERERS`: ``render(results, section) -> (markdown lines, claims)``. A claim
is decided by one or more compared differences, each paired over the same test images and pooled over the seeds both
sides ran at, with its 95% paired bootstrap interval (:mod:`hf_advsoup.intervals`): *reproduced* when every interval
lies on the claim's side of its boundary, *not reproduced* when one lies wholly on the other side, *unresolved*
otherwise -- with what would resolve it. Single-number claims (a collapse to at most 5% robust accuracy) use the
number's 95% Wilson interval the same way; collapse claims of the long runs come from their training curves.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..intervals import percent_text, points
from .jobs import format_duration

__all__ = ["PAPER_CLAIMS", "RENDERERS", "render_card", "write_card"]

logger = logging.getLogger(__name__)

DAGGER = "†"
SIDES = {"at least": "≥", "at most": "≤", "above": ">", "below": "<", "within": "within ±"}

PAPER_CLAIMS = {
    "table1": "co-training with a doubled classification token nearly matches adversarial training in robust mode "
              "(about 4 points below on ImageNet); fully shared co-training (no adapter) loses all robustness",
    "table5": "co-training's clean mode is at least as accurate as nominal training (83.8% vs 82.6% on ImageNet), "
              "while adversarial training costs clean accuracy",
    "soups": "soups of the two tokens trade clean for robust accuracy smoothly and as well as (or better than) "
             "ensembles at half their cost, while soups of two independently trained networks collapse in between",
    "table2": "PGD-5 is on par with PGD-2; FAST-AT and N-FGSM with the reduced steps lose about 1 point of robust "
              "accuracy; with their authors' recommended steps both overfit catastrophically (no robustness)",
    "alpha": "only alpha between 0 and 0.4 is on the Pareto front; from alpha=1 down to 0.4, decreasing alpha "
             "improves both modes",
    "transfer": "fine-tuning all weights from the co-trained model transfers better than from nominal or "
                "adversarial pre-training",
    "long_horizon": "fully shared co-training loses its robustness during training (Figure 10), as FAST-AT and N-FGSM "
                    "do with their authors' recommended steps (Table 2, Figure 6: catastrophic overfitting)",
}


# ----------------------------------------------------------------------------------------------- formatting
def pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def cell(stat: dict[str, Any] | None) -> str:
    """A number of the tables: the accuracy pooled over the seeds run (a count of images), marked with a dagger
    when that is more than one seed."""
    if not stat:
        return "—"
    return pct(stat["mean"]) + (DAGGER * (len(stat["by_seed"]) - 1) if len(stat["by_seed"]) > 1 else "")


def interval_cell(stat: dict[str, Any] | None) -> str:
    """``"47.2% [45.0, 49.4]"``: a pooled accuracy and its 95% Wilson interval (a dagger per extra seed)."""
    if not stat:
        return "—"
    text = percent_text(stat["mean"], stat["interval_95"])
    return text.replace("%", "%" + DAGGER * (len(stat["by_seed"]) - 1), 1)


def difference_text(c: dict[str, Any]) -> str:
    """How the card states a compared difference: its size, its 95% paired interval, the images and seeds."""
    seeds = c["num_seeds"]
    return (f"{points(Fraction(c['difference_exact']))} points [{points(Fraction(c['interval_95_exact'][0]))}, "
            f"{points(Fraction(c['interval_95_exact'][1]))}] ({c['num_examples']:,} images x {seeds} "
            f"seed{'s' if seeds > 1 else ''})")


def boundary_text(c: dict[str, Any]) -> str:
    """The claim as tested: ``"difference ≥ -4.0 points"``."""
    if c["direction"] == "within":
        return f"difference within ±{100 * c['boundary']:.1f} points"
    return f"difference {SIDES[c['direction']]} {points(Fraction(c['boundary_exact']))} points"


def needs_text(c: dict[str, Any], max_seeds: int) -> str:
    """What would change an unresolved verdict."""
    if c["verdict"] != "unresolved":
        return ""
    if c.get("seeds_to_resolve"):
        return f"about {c['seeds_to_resolve']} seeds (the study stopped at {max_seeds})"
    if c.get("images_to_resolve"):
        return f"about {c['images_to_resolve']:,} images x {c['num_seeds']} seed(s) at this difference"
    return "the difference sits on the boundary: no number of images resolves it"


def _comparison(section: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((c for c in section.get("comparisons", []) if c["key"] == key), None)


def combine(verdicts: list[str]) -> str:
    """One verdict from several parts of a claim: not reproduced if any part is, unresolved if any part is."""
    if "not reproduced" in verdicts:
        return "not reproduced"
    if "unresolved" in verdicts:
        return "unresolved"
    return "reproduced"


def single_number_verdict(stat: dict[str, Any], boundary: str, direction: str) -> str:
    """A claim about one accuracy ("at most 5%"), from its pooled 95% Wilson interval, compared exactly."""
    low, high = (Fraction(v) for v in stat["interval_95"])
    bound = Fraction(boundary)
    holds = {"at most": lambda v: v <= bound, "at least": lambda v: v >= bound}[direction]
    if holds(low) and holds(high):
        return "reproduced"
    if not holds(low) and not holds(high):
        return "not reproduced"
    return "unresolved"


def _mean_time(times: dict[str, float]) -> str:
    return format_duration(sum(times.values()) / len(times)) if times else "—"


def _collapse_text(collapse: dict[str, dict[str, Any]]) -> str:
    """The catastrophic-overfitting cell of a run (per seed when several ran)."""
    parts = []
    for seed, co in collapse.items():
        prefix = f"s{seed}: " if len(collapse) > 1 else ""
        if not co.get("monitored"):
            parts.append(prefix + "not monitored (no attack)")
        elif co["detected"]:
            parts.append(prefix + f"**yes**, epoch {co['epoch']:g}: {pct(co['best_before'])} -> {pct(co['after'])}"
                         f" (final {pct(co['final'])})")
        else:
            parts.append(prefix + "no")
    return "; ".join(parts) or "—"


def _attack_short(results: dict[str, Any]) -> str:
    presets = results["attack_of_record"]["presets"]
    return " + ".join(f"`{p}`" for p in presets)


# ----------------------------------------------------------------------------------------------- sections
Claims = list[dict[str, str]]


def _claim(section: str, claim: str, tested: str, here: str, verdict: str, needs: str = "") -> dict[str, str]:
    return {"section": section, "claim": claim, "tested": tested, "here": here, "verdict": verdict, "needs": needs}


def _claim_from(section: str, claim: str, comparisons: list[dict[str, Any]], results: dict[str, Any],
                here: str | None = None) -> dict[str, str]:
    """A claim decided by ``comparisons`` (all must hold)."""
    verdict = combine([c["verdict"] for c in comparisons])
    tested = "; ".join(f"{c['label']}: {boundary_text(c)}" for c in comparisons)
    here = here or "; ".join(difference_text(c) for c in comparisons)
    needs = "; ".join(filter(None, (needs_text(c, results["max_seeds"]) for c in comparisons
                                    if c["verdict"] == "unresolved")))
    return _claim(section, claim, tested, here, verdict, needs)


def render_epsilon(results: dict[str, Any], E: dict[str, Any]) -> tuple[list[str], Claims]:
    choice = E["choice"]
    lines = ["One nominal run and one adversarial-training run (alpha = 0) per radius, seed "
             f"{E['seed']}. The radius is chosen on the **validation** split by the rule `choose_epsilon`: "
             f"{choice['reason']}; the test columns are reported for reference only.", "",
             "| epsilon | nominal clean (val.) | nominal robust (val.) | adversarial clean (val.) | adversarial robust "
             "(val.) | nominal clean (test) | nominal robust (test) | adversarial clean (test) | adversarial robust "
             "(test) | chosen |", "|---|---|---|---|---|---|---|---|---|---|"]
    for val, test in zip(E["validation"], E["test"]):
        lines.append(f"| {val['epsilon']} | {pct(val['nominal_clean_accuracy'])} | {pct(val['nominal_robust_accuracy'])}"
                     f" | {pct(val['adversarial_clean_accuracy'])} | {pct(val['adversarial_robust_accuracy'])} | "
                     f"{pct(test['nominal_clean_accuracy'])} | {pct(test['nominal_robust_accuracy'])} | "
                     f"{pct(test['adversarial_clean_accuracy'])} | {pct(test['adversarial_robust_accuracy'])} | "
                     f"{'**yes**' if val['epsilon'] == choice['epsilon'] else ''} |")
    sentences = []
    for r in E["validation"]:
        if r["adversarial_clean_accuracy"] < 0.5 * r["nominal_clean_accuracy"]:
            sentences.append(f"At {r['epsilon']} adversarial training did not learn the task in this budget "
                             f"({pct(r['adversarial_clean_accuracy'])} clean accuracy on validation).")
        else:
            cost = r["nominal_clean_accuracy"] - r["adversarial_clean_accuracy"]
            sentences.append(f"At {r['epsilon']} the nominal model keeps {pct(r['nominal_robust_accuracy'])} robust "
                             f"accuracy and adversarial training {'costs' if cost > 0 else 'gains'} "
                             f"{100 * abs(cost):.1f} points of clean accuracy ({pct(r['adversarial_robust_accuracy'])}"
                             " robust) on validation.")
    sentences.append(f"Chosen: {choice['epsilon']}.")
    return lines + ["", " ".join(sentences), ""], []


def render_table1(results: dict[str, Any], T: dict[str, Any]) -> tuple[list[str], Claims]:
    from .sections import SHARED_COLLAPSE

    attack = _attack_short(results)
    lines = ["| setup | run | extra parameters | clean acc. (clean mode) | robust acc. (robust mode, "
             f"{attack}) [95% interval] | clean acc. (robust mode) | catastrophic overfitting | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in T["rows"]:
        lines.append(f"| {r['setup']} | `{r['run']}` | {r['extra_parameters']} | {cell(r['clean_accuracy'])} | "
                     f"{interval_cell(r['robust_accuracy'])} | {cell(r['clean_accuracy_robust_mode'])} | "
                     f"{_collapse_text(r['collapse'])} | {_mean_time(r['train_time_s'])} |")
    lines += ["", "Nominal and adversarial training are single networks (no adapter: both modes are the same model). "
              "Fully shared co-training uses alpha = 0.5 and one copy of every weight.", ""]
    shared = next(r for r in T["rows"] if r["adapter"] == "none" and 0.0 < r["alpha"] < 1.0)
    claims, sentences = [], []
    c = _comparison(T, "token_vs_adversarial_robust")
    if c:
        sentences.append(f"Doubled classification token, robust mode minus adversarial training: {difference_text(c)}.")
        claims.append(_claim_from("Table 1", "robust mode nearly matches adversarial training (within about 4 points)",
                                  [c], results))
    c = _comparison(T, "shared_vs_token_robust")
    if c:
        verdict = single_number_verdict(shared["robust_accuracy"], SHARED_COLLAPSE, "at most")
        here = (f"fully shared {interval_cell(shared['robust_accuracy'])} robust accuracy after "
                f"{shared['recipe_epochs']:g} epochs; vs the doubled token: {difference_text(c)}")
        collapsed = any(co.get("detected") for co in shared["collapse"].values())
        sentences.append(f"Fully shared co-training: {here}"
                         + ("; catastrophic overfitting was detected during its training." if collapsed else "."))
        claims.append(_claim("Table 1", "fully shared co-training loses all robustness", "robust accuracy ≤ 5.0% "
                             "(95% interval)", here, verdict,
                             "" if verdict != "unresolved" else "more images (the interval straddles 5%)"))
    adapters = [r for r in T["rows"] if r["adapter"] not in ("none", "cls_token")]
    token = next(r for r in T["rows"] if r["adapter"] == "cls_token")
    for r in adapters:
        c = _comparison(T, f"{r['adapter']}_vs_token_mean")
        if c:
            sentences.append(f"Doubled {r['adapter']} vs doubled token (mean of clean and robust accuracy, "
                             f"{r['extra_parameters']} vs {token['extra_parameters']} extra parameters): "
                             f"{difference_text(c)}.")
    return lines + [" ".join(sentences), ""], claims


def render_table5(results: dict[str, Any], T: dict[str, Any]) -> tuple[list[str], Claims]:
    lines = ["| setup | run | clean acc. (clean mode) [95% interval] | train time |", "|---|---|---|---|"]
    for r in T["rows"]:
        lines.append(f"| {r['setup']} | `{r['run']}` | {interval_cell(r['clean_accuracy'])} | "
                     f"{_mean_time(r['train_time_s'])} |")
    claims, sentences = [], []
    cost = _comparison(T, "adversarial_vs_nominal_clean")
    if cost:
        sentences.append(f"Adversarial training minus nominal training, clean accuracy: {difference_text(cost)}.")
    c = _comparison(T, "clean_mode_vs_nominal_clean")
    if c:
        sentences.append(f"Co-training's clean mode minus nominal training, clean accuracy: {difference_text(c)}.")
        parts = [c] + ([cost] if cost else [])
        claims.append(_claim_from("Table 5", "co-training's clean mode is at least as accurate as nominal training "
                                  "(here: not more than 0.5 points below), while adversarial training costs clean "
                                  "accuracy", parts, results))
    return lines + ["", " ".join(sentences), ""], claims


def render_soups(results: dict[str, Any], S: dict[str, Any]) -> tuple[list[str], Claims]:
    runs = S["runs"]
    lines = [f"The co-trained dual-token model (`{runs['cotrained']}`) at each beta (1 = clean mode, 0 = robust mode); "
             "ensembles average the two modes' probabilities (twice the compute); the two-network soup interpolates "
             f"all weights of the nominal (`{runs['nominal']}`, beta = 1) and adversarial (`{runs['adversarial']}`, "
             f"beta = 0) networks. Clean accuracy on {S['num_clean_examples']:,} test images, robust accuracy "
             f"({_attack_short(results)}) on the first {S['num_robust_examples']:,}.", "",
             "| beta | soup clean | soup robust | ensemble clean | ensemble robust | two-network soup clean | "
             "two-network soup robust |", "|---|---|---|---|---|---|---|"]
    for r in S["rows"]:
        lines.append(f"| {r['beta']:g} | {cell(r['soup']['clean'])} | {cell(r['soup']['robust'])} | "
                     f"{cell(r['ensemble']['clean'])} | {cell(r['ensemble']['robust'])} | "
                     f"{cell(r['independent_soup']['clean'])} | {cell(r['independent_soup']['robust'])} |")
    for name, point in S.get("extra_points", {}).items():
        lines.append(f"| {name} (seed {S['seed']}) | {pct(point['clean_accuracy'])} | {pct(point['robust_accuracy'])}"
                     " | — | — | — | — |")
    lines += ["", "![trade-off](tradeoff.png)", "![accuracy vs beta](accuracy_vs_beta.png)", "",
              f"The plots and `soup_results.{{json,csv,md}}` are seed {S['seed']} (the model of this card's "
              "front matter).", ""]
    claims, sentences = [], []
    robust = _comparison(S, "robust_mode_vs_clean_mode_robust")
    clean = _comparison(S, "clean_mode_vs_robust_mode_clean")
    if robust and clean:
        sentences.append(f"The trade-off: robust mode minus clean mode, robust accuracy {difference_text(robust)}; "
                         f"clean mode minus robust mode, clean accuracy {difference_text(clean)}.")
        claims.append(_claim_from("Table 9 / Figure 4", "the two modes trade clean for robust accuracy",
                                  [robust, clean], results))
    mono = S["monotone"]
    sentences.append("From beta 1 to 0 the soups' clean accuracy "
                     + ("never rises" if mono["clean_non_increasing"] else "rises somewhere")
                     + " and their robust accuracy " + ("never falls" if mono["robust_non_decreasing"] else
                                                        "falls somewhere") + " by more than one test image per seed.")
    versus = [c for c in S["comparisons"] if c["key"].startswith("soup_vs_ensemble_")]
    if versus:
        sentences.append("Soups minus ensembles (mean of clean and robust accuracy): "
                         + "; ".join(f"{c['label'].split(',')[0]}: {difference_text(c)}" for c in versus) + ".")
        claims.append(_claim_from("Table 9 / Figure 4", "soups are on par with or better than ensembles at half the "
                                  "compute (here: not more than 1 point below, at every inner beta)", versus, results))
    c = _comparison(S, "soup_vs_two_network_soup")
    if c:
        sentences.append(f"The tokens' soup minus the two-network soup ({c['label']}): {difference_text(c)}.")
        claims.append(_claim_from("Table 9 / Figure 4", "soups of two independently trained networks collapse in "
                                  "between (here: at least 20 points below the tokens' soup in clean accuracy at the "
                                  "middle beta)", [c], results))
    return lines + [" ".join(sentences), ""], claims


def training_attack_table(results: dict[str, Any], T: dict[str, Any]) -> list[str]:
    """The table and plot of a training-attack section (Table 2, or another instance of its section class)."""
    lines = [f"Co-training with a doubled classification token, alpha = 0.5, each training attack at "
             f"{results['epsilon']}. Catastrophic overfitting: the rule of the library's detector "
             "(`hf_advsoup.catastrophic_overfitting`, also used by `CatastrophicOverfittingCallback`) on the robust "
             "accuracy monitored after every epoch: a value below half the best so far, once that best reached twice "
             "the chance level.", "",
             f"| training attack | steps | step / eps | clean acc. (clean mode) | robust acc. (robust mode, "
             f"{_attack_short(results)}) [95% interval] | catastrophic overfitting | train time |",
             "|---|---|---|---|---|---|---|"]
    for r in T["rows"]:
        step = "—" if r["step_over_eps"] is None else f"{r['step_over_eps']:.3g}"
        lines.append(f"| {r['attack']} | {r['steps'] if r['steps'] is not None else '—'} | {step} | "
                     f"{cell(r['clean_accuracy'])} | {interval_cell(r['robust_accuracy'])} | "
                     f"{_collapse_text(r['collapse'])} | {_mean_time(r['train_time_s'])} |")
    return lines + ["", f"![robust accuracy during training]({T['plot']})", ""]


def render_table2(results: dict[str, Any], T: dict[str, Any]) -> tuple[list[str], Claims]:
    lines = training_attack_table(results, T)
    claims, sentences = [], []
    reference = T["rows"][0]
    for r in T["rows"][1:]:
        c = _comparison(T, f"{r['run']}_vs_reference_robust")
        if c is None:
            continue
        collapsed = [s for s, co in r["collapse"].items() if co.get("detected")]
        sentences.append(f"{r['attack']} minus {reference['attack']}, robust accuracy: {difference_text(c)}; "
                         f"catastrophic overfitting "
                         f"{'detected (seed ' + ', '.join(collapsed) + ')' if collapsed else 'not detected'} in "
                         f"{r['recipe_epochs']:g} epochs.")
        if c["claim"] and r["preset"] == "pgd5":
            claims.append(_claim_from("Table 2", "PGD-5 is on par with PGD-2 (here: within 1 point)", [c], results))
        elif c["claim"]:
            claims.append(_claim_from("Table 2", f"{r['attack']} loses about 1 point of robust accuracy (here: at "
                                      "most 2 points)", [c], results))
    return lines + [" ".join(sentences), "",
                    "The recommended-step runs' collapse claims are decided by the long runs (section \"Long runs\") "
                    "when they ran: a study run is too short to show catastrophic overfitting.", ""], claims


def render_alpha(results: dict[str, Any], A: dict[str, Any]) -> tuple[list[str], Claims]:
    choice = A.get("choice") or {}
    validation = {v["alpha"]: v for v in A["validation"]}
    lines = ["alpha = 1 is nominal training and alpha = 0 adversarial training (the single networks of Table 1); in "
             "between, co-training with a doubled classification token. Test numbers; the Pareto front is that of "
             "the test means; alpha is chosen on validation (`choose_alpha`: "
             f"{choice.get('reason', 'no co-trained alpha')}).", "",
             "| alpha | clean acc. (clean mode) | robust acc. (robust mode) | on the Pareto front | clean (val.) | "
             "robust (val.) | chosen on val. | train time |", "|---|---|---|---|---|---|---|---|"]
    for r in A["rows"]:
        v = validation.get(r["alpha"], {})
        lines.append(f"| {r['alpha']:g} | {cell(r['clean_accuracy'])} | {cell(r['robust_accuracy'])} | "
                     f"{'yes' if r['alpha'] in A['pareto_front'] else ''} | {pct(v.get('clean_accuracy'))} | "
                     f"{pct(v.get('robust_accuracy'))} | {'**yes**' if r['alpha'] == choice.get('alpha') else ''} | "
                     f"{_mean_time(r['train_time_s'])} |")
    lines += ["", f"![alpha sweep]({A['plot']})", ""]
    claims, sentences = [], []
    front = A["pareto_front"]
    outside = [a for a in front if a > 0.4]
    sentences.append(f"The Pareto front of the test means holds alpha = {', '.join(f'{a:g}' for a in front)}.")
    claims.append(_claim("Figure 3", "only alpha between 0 and 0.4 is on the Pareto front", "front of the test means "
                         "(point estimates: a descriptive claim)", f"front: alpha = {', '.join(f'{a:g}' for a in front)}",
                         "not reproduced" if outside else "reproduced"))
    steps = A.get("comparisons", [])
    if steps:
        sentences.append("Decreasing alpha from 1 to 0.4, step by step: "
                         + "; ".join(f"{c['label']}: {difference_text(c)}" for c in steps) + ".")
        verdicts = [c["verdict"] for c in steps]
        claims.append(_claim_from("Figure 3", "from alpha = 1 down to 0.4, decreasing alpha improves both modes",
                                  steps, results, here=f"{verdicts.count('reproduced')} of {len(steps)} step-metrics "
                                  f"improve (interval above 0), {verdicts.count('not reproduced')} get worse, "
                                  f"{verdicts.count('unresolved')} unresolved (details in the sentence above)"))
    if choice:
        chosen = next(r for r in A["rows"] if r["alpha"] == choice["alpha"])
        sentences.append(f"Chosen on validation: alpha = {choice['alpha']:g} (the paper's best: 0.4), with "
                         f"{cell(chosen['clean_accuracy'])} clean / {cell(chosen['robust_accuracy'])} robust accuracy "
                         "on test.")
    return lines + [" ".join(sentences), ""], claims


SOURCE_TITLES = {"nominal": "nominal", "adversarial": "adversarial", "cotrained": "co-trained"}


def render_transfer(results: dict[str, Any], T: dict[str, Any]) -> tuple[list[str], Claims]:
    recipe = ", ".join(f"{k} {v}" for k, v in T["recipe"].items())
    source = ", ".join(T["source_names"])
    target = ", ".join(T["target_names"])
    lines = [f"Pre-training on classes {source} (the study's recipe), transfer to classes {target} (new labels, new "
             "head) with `hf_advsoup.transfer.run_transfer` and the paper's recipe (`PAPER_RECIPE`) with fewer steps "
             f"and a smaller batch: {recipe}. Clean accuracy on the {T['num_test_examples']:,} test images of the "
             "target classes.", "",
             "Pre-trained sources (test images of the source classes, seed "
             f"{results['seeds'][0]}): " + ", ".join(f"{SOURCE_TITLES.get(k, k)} {pct(v['clean_accuracy'])} clean / "
                                                     f"{pct(v['robust_accuracy'])} robust"
                                                     for k, v in T["pretrain"].items()) + ".", "",
             "| strategy | " + " | ".join(T["columns"]) + " |", "|---" * (len(T["columns"]) + 1) + "|"]
    names = {"head": "Fine-tune head", "all": "Fine-tune all", "head+token": "Fine-tune head + cls token"}
    for strategy in T["strategies"]:
        cells = {c["column"]: c["accuracy"] for c in T["cells"] if c["strategy"] == strategy}
        lines.append(f"| {names.get(strategy, strategy)} | " + " | ".join(cell(cells.get(col)) for col in T["columns"])
                     + " |")
    claims, sentences = [], []
    for strategy in T["strategies"]:
        cells = {c["column"]: c["accuracy"]["mean"] for c in T["cells"] if c["strategy"] == strategy}
        co = max(("Co-trained, robust mode", "Co-trained, clean mode"), key=lambda k: cells[k])
        base = max(("Nominal", "Adversarial"), key=lambda k: cells[k])
        c = _comparison(T, f"{strategy}:{co}_vs_{base}")
        sentences.append(f"{names.get(strategy, strategy)}: best co-trained ({co}) minus best baseline ({base}): "
                         f"{difference_text(c)}.")
        if strategy == "all":
            claims.append(_claim_from("Table 6", "fine-tuning all weights transfers best from the co-trained model",
                                      [c], results))
    return lines + ["", " ".join(sentences), ""], claims


def render_long_horizon(results: dict[str, Any], L: dict[str, Any]) -> tuple[list[str], Claims]:
    steps = f", {L['optimizer_steps']:,} optimizer steps" if L.get("optimizer_steps") else ""
    lines = [f"Each run {L['epochs']:g} epochs{steps} (the study's runs: {L['study_epochs']:g} epochs, a tenth of "
             f"the steps), at l_inf {' and '.join(L['epsilons'])}; robust accuracy of robust mode monitored on "
             "validation after every epoch (the curves below, as the paper's Figure 10), and the final model on the "
             "test split. Collapse: the library's catastrophic-overfitting rule on the monitored curve (a value below "
             "half the best so far, once that best reached twice the chance level).", "",
             "| run | epsilon | clean acc. (clean mode, test) | robust acc. (robust mode, test) [95% interval] | best "
             "monitored | final monitored | collapse | train time |", "|---|---|---|---|---|---|---|---|"]
    for r in L["rows"]:
        monitor = [v for _, v in r["monitor"]]
        lines.append(f"| {r['title']} | {r['epsilon']} | {cell(r['clean_accuracy'])} | "
                     f"{interval_cell(r['robust_accuracy'])} | {pct(max(monitor)) if monitor else '—'} | "
                     f"{pct(monitor[-1]) if monitor else '—'} | {_collapse_text(r['collapse'])} | "
                     f"{_mean_time(r['train_time_s'])} |")
    lines += ["", f"![robust accuracy during the long runs]({L['plot']})", ""]
    claims = []
    for kind, claim in (("shared", "fully shared co-training loses its robustness during training (Figure 10)"),
                        ("fast_at", "FAST-AT with its authors' step overfits catastrophically"),
                        ("nfgsm", "N-FGSM with its authors' step overfits catastrophically")):
        rows = [r for r in L["rows"] if r["kind"] == kind]
        if not rows:
            continue
        detected = [r for r in rows if any(co.get("detected") for co in r["collapse"].values())]
        here = "; ".join(f"at {r['epsilon']}: {'collapse at epoch ' + str(_first_collapse(r)) if r in detected else 'no collapse'}"
                         f" (best {pct(max((v for _, v in r['monitor']), default=None))}, final "
                         f"{pct(r['monitor'][-1][1] if r['monitor'] else None)})" for r in rows)
        verdict = "reproduced" if detected else "not reproduced"
        needs = "" if detected else (f"no collapse within {L['epochs']:g} epochs at these radii: longer runs or "
                                     "larger radii")
        claims.append(_claim("Long runs", claim, "a collapse on the monitored curve, at any radius", here, verdict,
                             needs))
    token = [r for r in L["rows"] if r["kind"] == "token"]
    if token:
        kept = all(not any(co.get("detected") for co in r["collapse"].values()) for r in token)
        claims.append(_claim("Long runs", "the doubled classification token keeps its robustness over the same runs",
                             "no collapse on the monitored curve", "; ".join(
                                 f"at {r['epsilon']}: final {pct(r['monitor'][-1][1] if r['monitor'] else None)}"
                                 for r in token), "reproduced" if kept else "not reproduced"))
    return lines, claims


def _first_collapse(row: dict[str, Any]) -> str:
    epochs = [co["epoch"] for co in row["collapse"].values() if co.get("detected")]
    return f"{min(epochs):g}" if epochs else "—"


Renderer = Callable[[dict[str, Any], dict[str, Any]], tuple[list[str], Claims]]
RENDERERS: dict[str, tuple[str, Renderer]] = {
    "epsilon": ("Choosing epsilon", render_epsilon),
    "table1": ("Table 1: adapters", render_table1),
    "table5": ("The Table 5 claim: clean mode vs nominal training", render_table5),
    "soups": ("Table 9 / Figure 4: soups, ensembles and the soup of two networks", render_soups),
    "table2": ("Table 2: the training attack", render_table2),
    "alpha": ("Figure 3: the co-training weight alpha", render_alpha),
    "transfer": ("Table 6: transfer", render_transfer),
    "long_horizon": ("Long runs: catastrophic overfitting (Figure 10, Table 2)", render_long_horizon),
}
"""``{section: (heading, renderer)}`` in the card's order."""


# ----------------------------------------------------------------------------------------------- the card
def describe_attack(config: dict[str, Any], preset: str) -> str:
    """One attack of record as the card states it, from its :class:`~hf_advsoup.attacks.AttackConfig` fields."""
    text = f"`{preset}` ({config['name']}, {config['norm']}"
    if config["name"] == "autoattack":
        return text + f", AutoAttack {config['autoattack_version']})"
    text += f", {config['steps']} steps, {config['loss']} loss"
    if config["name"] == "pgd40":
        decay = config.get("lr_decay_steps")
        text += f", Adam step {config['step_size']:g}" + (f" decayed at steps {', '.join(map(str, decay))}" if decay
                                                         else "")
    elif config.get("step_size") is not None:
        text += f", step {config['step_size']:.4g}"
    text += f", {config['restarts']} restart(s){', targeted' if config.get('targeted') else ''}"
    text += ", best iterate kept" if config.get("keep_best") else ""
    if config.get("target_classes"):
        text += (f"; then MultiTargeted: every example still classified correctly is attacked again towards each of "
                 f"its {config['target_classes']} most likely other classes with the targeted margin loss, the same "
                 "schedule, the first success kept")
    return text + ")"


def describe_recipe(r: dict[str, Any]) -> tuple[str, str]:
    """(model, training) rows of the setup table, from a run's recorded ``run_args.json`` settings."""
    model = (f"ViT, hidden {r['hidden_size']}, {r['num_hidden_layers']} layers, {r['num_attention_heads']} heads, "
             f"MLP {r['intermediate_size']}, patch {r['patch_size']}"
             + (f" stride {r['patch_stride']}" if r.get("patch_stride") else "")
             + f", {r['pooling']}-pooled head, {r['image_size']}x{r['image_size']} inputs")
    crops = f"random resized crops (min scale {r['crop_min_scale']:g})" if r["random_resized_crop"] else "no crops"
    training = (f"{r['num_train_epochs']:g} epochs, batch {r['per_device_train_batch_size']}, {r['optim']} (betas "
                f"{r['adam_beta1']:g}, {r['adam_beta2']:g}), lr {r['learning_rate']:g} (base {r['base_learning_rate']:g}"
                f" per 256), {r['lr_scheduler_type']} schedule with {r['warmup_epochs']:g} warm-up epoch(s), weight "
                f"decay {r['weight_decay']:g}, label smoothing {r['label_smoothing_factor']:g}, gradient clipping "
                f"{r['max_grad_norm']:g}, EMA {r['ema_decay']:g} (evaluated and saved), {crops}, "
                f"{'horizontal flips' if r['horizontal_flip'] else 'no flips'}, RandAugment layers "
                f"{r['randaugment_num_layers']}, mixup {r['mixup_alpha']:g}, CutMix {r['cutmix_alpha']:g}; "
                f"co-training attack {r['train_attack'] or 'pgd2'} unless stated")
    return model, training


def _front_matter(results: dict[str, Any], soups: Any) -> list[str]:
    try:
        from huggingface_hub import ModelCardData

        from ..hub import DatasetInfo, build_eval_results

        kwargs: dict[str, Any] = dict(library_name="transformers", license="apache-2.0",
                                      pipeline_tag="image-classification", metrics=["accuracy"],
                                      tags=["adversarial-robustness", "model-soups", "adversarial-training",
                                            "vision-transformer", "hf_advsoup", "reproduction"])
        if soups is not None:
            kwargs["model_name"] = f"advsoup-vit-{results['preset']['name']}-reproduction"
            kwargs["eval_results"] = build_eval_results(
                soups, {results["title"]: DatasetInfo(results["preset"]["dataset_name"], split="test")},
                families=("soup",))
        return ["---", ModelCardData(**kwargs).to_yaml(), "---", ""]
    except Exception as error:  # the card stays readable without its front matter
        logger.warning("No YAML front matter: %s", error)
        return []


def render_card(results: dict[str, Any], soups: Any = None) -> str:
    """The card's markdown from ``results`` (``results.json``); ``soups``: the seed's
    :class:`~hf_advsoup.soups.SoupEvaluation`, for the front matter's model-index."""
    p, S, data = results["preset"], results["sections"], results["data"]
    counts = data["counts"]
    first = results["seeds"][0]
    recipe = next((r["recipe"] for r in results["runs"].values() if "classes" not in r["run"]), None)
    model_row, training_row = describe_recipe(recipe) if recipe else ("—", "—")
    attacks = "; ".join(describe_attack(c, name) for c, name in zip(results["attack_of_record"]["configs"],
                                                                   results["attack_of_record"]["presets"]))
    timings = results.get("timings", {})
    reused = sorted(n for n, j in results["jobs"].items() if j["reused"])
    job_time = sum(j["wall_time_s"] for j in results["jobs"].values())
    lines = _front_matter(results, soups) + [
        f"# Adversarial co-training and soups on {results['title']}, in small: a reproduction study", "",
        f"The card of the dual-classification-token ViT co-trained on {results['title']} (the `cls_token` run of "
        "Table 1 below), and a small-scale reproduction of the qualitative claims of *Revisiting adapters with "
        "adversarial training* (Rebuffi, Croce & Gowal, ICLR 2023). Every number on this page was produced by "
        "`scripts/reproduce.py` (see `results.json`); the paper's claims are quoted in words.", "",
        *(["**Quick mode (smoke-test scale): the numbers below mean nothing.**", ""] if results["arguments"]["quick"]
          else []),
        "## Setup", "", "| | |", "|---|---|",
        f"| command | `{results['command']}` |",
        f"| data | {results['title']}: {counts['train']} training / {counts['validation']} validation / "
        f"{counts['test']} test images, {len(data['class_names'])} classes; train: {data['provenance']['train']}; "
        f"validation: {data['provenance']['validation']}; test: {data['provenance']['test']} |",
        "| protocol | every reported number is on the **test** split; the epsilon and the alpha are chosen on the "
        "**validation** split; per-epoch monitoring uses validation images |",
        f"| model | {model_row} |",
        f"| training | {training_row} (`scripts/cotrain.py`; every run's arguments are in `results.json`) |",
        f"| epsilon | l_inf {results['epsilon']} in [0, 1] pixel units ({results['epsilon_source']}) |",
        f"| clean accuracy | clean mode (beta = 1) unless stated, on {p['test_samples'] or counts['test']} test images |",
        f"| robust accuracy | **attack of record**, for every robust number on this card: {attacks}"
        + (f", steps overridden to {results['attack_of_record']['steps_override']}"
           if results['attack_of_record']['steps_override'] else "")
        + f" (the worst case over them, per image), l_inf {results['epsilon']}, robust mode (beta = 0) unless "
        f"stated, on the first {p['test_robust_samples']} test images (soups: {p['soup_robust_samples']}); a "
        "misclassified clean image counts as not robust |",
        f"| monitoring | during training only (catastrophic overfitting): after each epoch, `pgd40` cut to "
        f"{p['monitor_steps']} steps on the first {p['monitor_samples']} validation images |",
        f"| seeds | {first} for every run; another seed (up to {results['max_seeds']} in all) of both results of a "
        "claim whose 95% interval straddles the claim's boundary, when that many seeds can resolve it; "
        f"{DAGGER}: one more seed pooled into the number |",
        "| statistics | accuracies are counts of test images (pooled over the seeds run), with 95% Wilson score "
        "intervals; each compared difference is paired over the same test images and seeds: 95% paired bootstrap "
        "interval (10,000 resamples of the images, and of the seeds when there are several) and the exact McNemar "
        "p-value in `results.json`; a claim is **reproduced** when the interval lies on its side of the stated "
        "boundary, **not reproduced** when it lies on the other side, **unresolved** otherwise; all comparisons "
        "between exact fractions |",
        *(f"| note | {note} |" for note in p.get("notes", [])),
        f"| machine | {results['machine']}"
        + (f"; load average {results['load_average']:.1f} at the end" if results.get("load_average") else "") + " |",
        f"| wall time | **{format_duration(timings.get('total', 0))}** for this invocation ("
        + ", ".join(f"{k} {format_duration(v)}" for k, v in timings.items() if k != "total")
        + f"); {len(results['jobs'])} jobs, {format_duration(job_time)} of job time |",
        *([f"| report | rendered again from `results.json` by `python scripts/reproduce.py --report_only` "
           f"({results['rerendered']}); the numbers are those of the run |"] if results.get("rerendered") else []),
        "",
    ]
    if reused:
        lines += [f"{len(reused)} job(s) were reused from an earlier invocation with the same inputs; their recorded "
                  "times are shown (`results.json`, `jobs`).", ""]
    claims: Claims = []
    for name, (heading, render) in RENDERERS.items():
        if name in S:
            body, section_claims = render(results, S[name])
            lines += [f"## {heading}", "", *body]
            claims += section_claims
    if claims:
        lines += ["## The paper's claims, here", "",
                  "Each claim as tested here (its boundary), the paired difference with its 95% interval (images x "
                  "seeds), the verdict that follows from the interval, and what an unresolved verdict would need.", "",
                  "| section | paper's claim | tested as | here: difference [95% interval] | verdict | would need |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c['section']} | {c['claim']} | {c['tested']} | {c['here']} | **{c['verdict']}** | "
                  f"{c['needs'] or '—'} |" for c in claims]
        lines += ["", "The paper's wording of each claim: " + " ".join(
            f"*{RENDERERS[k][0]}*: {v}." for k, v in PAPER_CLAIMS.items() if k in S), ""]
    not_run = [name for name in RENDERERS if name not in S]
    if not_run:
        lines += [f"Sections not run in this invocation: {', '.join(not_run)}.", ""]
    cotrained = S.get("soups", {}).get("runs", {}).get("cotrained")
    if cotrained:
        lines += ["## Use the model", "", "The checkpoints are not committed; the command above rebuilds them in "
                  f"`{results['work_dir']}/runs/`:", "", "```python",
                  "import hf_advsoup  # registers the Auto classes",
                  "from transformers import AutoModelForImageClassification",
                  f"model = AutoModelForImageClassification.from_pretrained(\"{results['work_dir']}/runs/{cotrained}_s"
                  f"{first}\", beta=0.5)", "```", ""]
    return "\n".join(lines)


def write_plots(results: dict[str, Any], output_dir: Path, soups: Any = None) -> None:
    """The section plots: the soups' (``hf_advsoup.plots.plot_all``, with the extra points), the alpha sweep, and the
    robust accuracy monitored during training per training attack."""
    from ..plots import plot_all, plot_pareto, plot_training_curves

    S = results["sections"]
    eps = results["epsilon"]
    if soups is not None and "soups" in S:
        extra = {name: (p["clean_accuracy"], p["robust_accuracy"]) for name, p in S["soups"]["extra_points"].items()}
        plot_all(soups, output_dir, extra_points=extra)
    if "alpha" in S:
        A = S["alpha"]
        points = {f"α={r['alpha']:g}": (r["clean_accuracy"]["mean"], r["robust_accuracy"]["mean"]) for r in A["rows"]}
        plot_pareto(points, [f"α={a:g}" for a in A["pareto_front"]], output_dir / A["plot"],
                    xlabel="clean accuracy, clean mode (%)",
                    ylabel=f"robust accuracy, robust mode (%), l_inf {eps}",
                    title="Co-training loss weighting (α=1 nominal, α=0 adversarial), test means")
    for T in S.values():  # every table with training curves (Table 2 and its kind, the long runs)
        if T.get("plot") and T.get("rows") and "monitor" in T["rows"][0]:
            label = "attack" if "attack" in T["rows"][0] else "title"
            curves = {r[label] + (f", l_inf {r['epsilon']}" if "epsilon" in r else ""): r["monitor"]
                      for r in T["rows"]}
            marked = [r[label] + (f", l_inf {r['epsilon']}" if "epsilon" in r else "") for r in T["rows"]
                      if r["collapse"].get(str(results["seeds"][0]), {}).get("detected")]
            plot_training_curves(curves, output_dir / T["plot"], marked=marked,
                                 ylabel=f"robust accuracy, robust mode (%)\nmonitoring, l_inf {eps}",
                                 title=f"Robust accuracy during co-training, seed {results['seeds'][0]}")


def write_card(results: dict[str, Any], output_dir: str | Path, soups_dir: str | Path | None = None) -> Path:
    """Write ``results.json``, the soup files (copied from ``soups_dir`` when given), the plots and ``README.md`` into
    ``output_dir``; returns the card's path."""
    from ..soups import SoupEvaluation

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if soups_dir is not None:
        for name in ("soup_results.json", "soup_results.csv", "soup_results.md"):
            shutil.copyfile(Path(soups_dir) / name, output_dir / name)
    soups = None
    if "soups" in results["sections"] and (output_dir / "soup_results.json").exists():
        soups = SoupEvaluation.load_json(output_dir / "soup_results.json")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_plots(results, output_dir, soups)
    path = output_dir / "README.md"
    path.write_text(render_card(results, soups))
    return path
