"""The study's card: setup, one table per section, the plots, sentences and a verdict per paper claim -- all built
from ``results.json`` (never typed by hand), so ``--report_only`` renders the same card again.

Each section has a renderer in :data:`RENDERERS`: ``render(results, section) -> (markdown lines, claims)``, where a
claim is ``{"section", "claim", "here", "verdict"}`` and the verdict is ``"reproduced"``, ``"not reproduced"``,
``"within noise"`` or ``"unresolved"`` (one seed under the threshold). Differences are judged by the seed-noise rule
of :class:`hf_advsoup.study.rules.Difference` (stated on the card).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .jobs import format_duration

__all__ = ["PAPER_CLAIMS", "RENDERERS", "render_card", "write_card"]

logger = logging.getLogger(__name__)

DAGGER = "†"

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
}


# ----------------------------------------------------------------------------------------------- formatting
def pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def cell(stat: dict[str, Any] | None) -> str:
    """A number of the tables: the mean over the seeds run, marked with a dagger when that is two seeds."""
    if not stat:
        return "—"
    return pct(stat["mean"]) + (DAGGER if len(stat["by_seed"]) > 1 else "")


def signed_points(value: float) -> str:
    return f"{100 * value:+.1f} points"


def difference_text(c: dict[str, Any]) -> str:
    """How the card states a compared difference: its size, the seeds, and the verdict of the seed-noise rule."""
    text = signed_points(c["difference"])
    if len(c["seeds"]) > 1:
        per_seed = ", ".join(signed_points(c["a"][str(s)] - c["b"][str(s)]).replace(" points", "") for s in c["seeds"])
        return (f"{text} (mean of seeds {' and '.join(map(str, c['seeds']))}: {per_seed}; spread between seeds "
                f"{100 * c['spread']:.1f} points: {c['verdict']})")
    if c["verdict"] == "unresolved":
        return f"{text} (one seed, under {100 * c['threshold']:g} points: unresolved, no second seed was run)"
    return f"{text} (one seed; at least {100 * c['threshold']:g} points)"


def _comparison(section: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((c for c in section.get("comparisons", []) if c["key"] == key), None)


def at_least(c: dict[str, Any]) -> str:
    """Verdict of a claim that ``a >= b``."""
    if c["verdict"] == "unresolved":
        return "unresolved"
    if c["verdict"] == "within seed noise":
        return "within noise"
    return "reproduced" if c["difference"] >= 0 else "not reproduced"


def on_par(c: dict[str, Any]) -> str:
    """Verdict of a claim that ``a`` and ``b`` are on par."""
    if c["verdict"] == "unresolved":
        return "unresolved"
    return "reproduced" if c["verdict"] == "within seed noise" else "not reproduced"


def _mean_time(times: dict[str, float]) -> str:
    return format_duration(sum(times.values()) / len(times)) if times else "—"


def _collapse_text(collapse: dict[str, dict[str, Any]]) -> str:
    """The catastrophic-overfitting cell of a run (per seed when two ran)."""
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


def _claim(section: str, claim: str, here: str, verdict: str) -> dict[str, str]:
    return {"section": section, "claim": claim, "here": here, "verdict": verdict}


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
    attack = _attack_short(results)
    lines = ["| setup | run | extra parameters | clean acc. (clean mode) | robust acc. (robust mode, "
             f"{attack}) | clean acc. (robust mode) | catastrophic overfitting | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in T["rows"]:
        lines.append(f"| {r['setup']} | `{r['run']}` | {r['extra_parameters']} | {cell(r['clean_accuracy'])} | "
                     f"{cell(r['robust_accuracy'])} | {cell(r['clean_accuracy_robust_mode'])} | "
                     f"{_collapse_text(r['collapse'])} | {_mean_time(r['train_time_s'])} |")
    lines += ["", "Nominal and adversarial training are single networks (no adapter: both modes are the same model). "
              "Fully shared co-training uses alpha = 0.5 and one copy of every weight.", ""]
    rows = {r["run"]: r for r in T["rows"]}
    token = next(r for r in T["rows"] if r["adapter"] == "cls_token")
    adv = next(r for r in T["rows"] if r["alpha"] == 0.0)
    shared = next(r for r in T["rows"] if r["adapter"] == "none" and 0.0 < r["alpha"] < 1.0)
    claims, sentences = [], []
    c = _comparison(T, "token_vs_adversarial_robust")
    if c:
        close = c["verdict"] == "within seed noise" or c["difference"] >= -0.04
        verdict = "unresolved" if c["verdict"] == "unresolved" else ("reproduced" if close else "not reproduced")
        here = (f"robust accuracy {cell(token['robust_accuracy'])} in robust mode vs {cell(adv['robust_accuracy'])} "
                f"for adversarial training: {difference_text(c)}")
        sentences.append(f"Doubled classification token: {here}.")
        claims.append(_claim("Table 1", "robust mode nearly matches adversarial training (within about 4 points)",
                             here, verdict))
    c = _comparison(T, "shared_vs_token_robust")
    if c:
        lost = shared["robust_accuracy"]["mean"] < 0.05
        here = (f"fully shared {cell(shared['robust_accuracy'])} robust vs doubled token "
                f"{cell(token['robust_accuracy'])}: {difference_text(c)}")
        collapsed = any(co.get("detected") for co in shared["collapse"].values())
        sentences.append(f"Fully shared co-training: {here}"
                         + ("; catastrophic overfitting was detected during its training." if collapsed else "."))
        claims.append(_claim("Table 1", "fully shared co-training loses all robustness (below 5% here)", here,
                             "reproduced" if lost else "not reproduced"))
    adapters = [r for r in T["rows"] if r["adapter"] not in ("none", "cls_token")]
    for r in adapters:
        c = _comparison(T, f"{r['adapter']}_vs_token_mean")
        if c:
            sentences.append(f"Doubled {r['adapter']} vs doubled token (mean of clean and robust accuracy, "
                             f"{r['extra_parameters']} vs {token['extra_parameters']} extra parameters): "
                             f"{difference_text(c)}.")
    del rows
    return lines + [" ".join(sentences), ""], claims


def render_table5(results: dict[str, Any], T: dict[str, Any]) -> tuple[list[str], Claims]:
    lines = ["| setup | run | clean acc. (clean mode) | train time |", "|---|---|---|---|"]
    for r in T["rows"]:
        lines.append(f"| {r['setup']} | `{r['run']}` | {cell(r['clean_accuracy'])} | {_mean_time(r['train_time_s'])} |")
    claims, sentences = [], []
    cost = _comparison(T, "adversarial_vs_nominal_clean")
    if cost:
        sentences.append(f"Adversarial training vs nominal training, clean accuracy: {difference_text(cost)}.")
    c = _comparison(T, "clean_mode_vs_nominal_clean")
    if c:
        here = f"clean mode vs nominal training, clean accuracy: {difference_text(c)}"
        sentences.append(f"Co-training's {here}.")
        claims.append(_claim("Table 5", "co-training's clean mode is at least as accurate as nominal training", here,
                             at_least(c)))
    return lines + ["", " ".join(sentences), ""], claims


def render_soups(results: dict[str, Any], S: dict[str, Any]) -> tuple[list[str], Claims]:
    runs = S["runs"]
    lines = [f"The co-trained dual-token model (`{runs['cotrained']}`) at each beta (1 = clean mode, 0 = robust mode); "
             "ensembles average the two modes' probabilities (twice the compute); the two-network soup interpolates "
             f"all weights of the nominal (`{runs['nominal']}`, beta = 1) and adversarial (`{runs['adversarial']}`, "
             f"beta = 0) networks. Clean accuracy on {S['num_clean_examples']} test images, robust accuracy "
             f"({_attack_short(results)}) on the first {S['num_robust_examples']}.", "",
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
        verdicts = {at_least(robust), at_least(clean)}
        verdict = ("not reproduced" if "not reproduced" in verdicts else "unresolved" if "unresolved" in verdicts
                   else "within noise" if "within noise" in verdicts else "reproduced")
        here = (f"robust mode minus clean mode, robust accuracy {difference_text(robust)}; clean mode minus robust "
                f"mode, clean accuracy {difference_text(clean)}")
        sentences.append(f"The trade-off: {here}.")
        claims.append(_claim("Table 9 / Figure 4", "the two modes trade clean for robust accuracy", here, verdict))
    mono = S["monotone"]
    sentences.append("From beta 1 to 0 the soups' clean accuracy "
                     + ("never rises" if mono["clean_non_increasing"] else "rises somewhere")
                     + " and their robust accuracy " + ("never falls" if mono["robust_non_decreasing"] else
                                                        "falls somewhere") + " by more than one test image.")
    versus = [c for c in S["comparisons"] if c["key"].startswith("soup_vs_ensemble_")]
    if versus:
        worse = [c for c in versus if c["real"] and c["difference"] < 0]
        better = [c for c in versus if c["real"] and c["difference"] > 0]
        noise = [c for c in versus if not c["real"]]
        here = (f"over {len(versus)} inner betas (mean of clean and robust accuracy), the soup is better beyond noise "
                f"at {len(better)}, worse beyond noise at {len(worse)}, and within noise or unresolved at "
                f"{len(noise)}")
        sentences.append(f"Soups vs ensembles: {here}.")
        unresolved = [c for c in noise if c["verdict"] == "unresolved"]
        claims.append(_claim("Table 9 / Figure 4", "soups are on par with or better than ensembles at half the compute",
                             here, "not reproduced" if worse else "unresolved" if unresolved else "reproduced"))
    c = _comparison(S, "soup_vs_two_network_soup")
    if c:
        mid_row = next(r for r in S["rows"] if f"beta {r['beta']:g}," in c["label"])
        soup_clean, two_clean = mid_row["soup"]["clean"]["mean"], mid_row["independent_soup"]["clean"]["mean"]
        collapses = two_clean < 0.5 * soup_clean
        here = (f"at beta {mid_row['beta']:g}, clean accuracy {pct(two_clean)} for the two-network soup vs "
                f"{pct(soup_clean)} for the soup of the tokens ({difference_text(c)})")
        sentences.append(f"Two-network soup: {here}.")
        claims.append(_claim("Table 9 / Figure 4", "soups of two independently trained networks collapse in between "
                             "(here: below half the clean accuracy of the tokens' soup)", here,
                             "reproduced" if collapses else "not reproduced"))
    return lines + [" ".join(sentences), ""], claims


def training_attack_table(results: dict[str, Any], T: dict[str, Any]) -> list[str]:
    """The table and plot of a training-attack section (Table 2, or another instance of its section class)."""
    lines = [f"Co-training with a doubled classification token, alpha = 0.5, each training attack at "
             f"{results['epsilon']}. Catastrophic overfitting: the rule of the library's detector "
             "(`hf_advsoup.catastrophic_overfitting`, also used by `CatastrophicOverfittingCallback`) on the robust "
             "accuracy monitored after every epoch: a value below half the best so far, once that best reached twice "
             "the chance level.", "",
             f"| training attack | steps | step / eps | clean acc. (clean mode) | robust acc. (robust mode, "
             f"{_attack_short(results)}) | catastrophic overfitting | train time |", "|---|---|---|---|---|---|---|"]
    for r in T["rows"]:
        step = "—" if r["step_over_eps"] is None else f"{r['step_over_eps']:.3g}"
        lines.append(f"| {r['attack']} | {r['steps'] if r['steps'] is not None else '—'} | {step} | "
                     f"{cell(r['clean_accuracy'])} | {cell(r['robust_accuracy'])} | {_collapse_text(r['collapse'])} | "
                     f"{_mean_time(r['train_time_s'])} |")
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
        sentences.append(f"{r['attack']}: robust accuracy {difference_text(c)} vs {reference['attack']}; catastrophic "
                         f"overfitting {'detected (seed ' + ', '.join(collapsed) + ')' if collapsed else 'not detected'}.")
        reduced = r["preset"] in ("fast_at", "nfgsm") and not r["custom_step"]
        if r["preset"] == "pgd5":
            claims.append(_claim("Table 2", "PGD-5 is on par with PGD-2", f"PGD-5 minus PGD-2: {difference_text(c)}",
                                 on_par(c)))
        elif reduced:
            verdict = {"reproduced": "not reproduced", "not reproduced": "reproduced"}.get(at_least(c), at_least(c))
            claims.append(_claim("Table 2", f"{r['attack']} loses about 1 point of robust accuracy",
                                 f"{difference_text(c)} vs PGD-2", verdict))
        elif r["preset"] in ("fast_at", "nfgsm"):
            claims.append(_claim("Table 2", f"{r['attack']} overfits catastrophically",
                                 f"collapse {'detected' if collapsed else 'not detected'}; robust accuracy "
                                 f"{cell(r['robust_accuracy'])}", "reproduced" if collapsed else "not reproduced"))
    return lines + [" ".join(sentences), ""], claims


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
    here = f"front: alpha = {', '.join(f'{a:g}' for a in front)}"
    sentences.append(f"The Pareto front of the test means holds alpha = {', '.join(f'{a:g}' for a in front)}.")
    claims.append(_claim("Figure 3", "only alpha between 0 and 0.4 is on the Pareto front", here,
                         "not reproduced" if outside else "reproduced"))
    steps = A.get("comparisons", [])
    if steps:
        verdicts = [at_least(c) for c in steps]
        verdict = ("not reproduced" if "not reproduced" in verdicts else "unresolved" if "unresolved" in verdicts
                   else "within noise" if "within noise" in verdicts else "reproduced")
        details = "; ".join(f"{c['label']}: {difference_text(c)}" for c in steps)
        sentences.append(f"Decreasing alpha from 1 to 0.4, step by step: {details}.")
        claims.append(_claim("Figure 3", "from alpha = 1 down to 0.4, decreasing alpha improves both modes",
                             f"{sum(v == 'reproduced' for v in verdicts)} of {len(verdicts)} steps improve beyond "
                             f"noise, {sum(v == 'not reproduced' for v in verdicts)} get worse beyond noise", verdict))
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
             f"and a smaller batch: {recipe}. Clean accuracy on the {T['num_test_examples']} test images of the "
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
        here = f"best co-trained ({co}) minus best baseline ({base}): {difference_text(c)}"
        sentences.append(f"{names.get(strategy, strategy)}: {here}.")
        if strategy == "all":
            claims.append(_claim("Table 6", "fine-tuning all weights transfers best from the co-trained model", here,
                                 at_least(c)))
    return lines + ["", " ".join(sentences), ""], claims


Renderer = Callable[[dict[str, Any], dict[str, Any]], tuple[list[str], Claims]]
RENDERERS: dict[str, tuple[str, Renderer]] = {
    "epsilon": ("Choosing epsilon", render_epsilon),
    "table1": ("Table 1: adapters", render_table1),
    "table5": ("The Table 5 claim: clean mode vs nominal training", render_table5),
    "soups": ("Table 9 / Figure 4: soups, ensembles and the soup of two networks", render_soups),
    "table2": ("Table 2: the training attack", render_table2),
    "alpha": ("Figure 3: the co-training weight alpha", render_alpha),
    "transfer": ("Table 6: transfer", render_transfer),
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
        f"| seeds | {first} for every run; seed {results['seeds'][1]} as well for every number in a compared difference "
        f"under {100 * results['seed_noise_threshold']:g} points at seed {first} "
        f"({'run' if results['second_seeds'] else 'not run in this invocation'}); {DAGGER}: mean of the two seeds |",
        f"| seed-noise rule | a difference is **within seed noise** when its size (of the two seeds' means) is no "
        "larger than the spread between the seeds, the largest change of either compared number from one seed to "
        f"the other; a difference of at least {100 * results['seed_noise_threshold']:g} points at one seed is "
        "reported as measured |",
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
                  "Verdicts: **reproduced**, **not reproduced**, **within noise** (the deciding difference is within "
                  "seed noise), **unresolved** (under the threshold with one seed).", "",
                  "| section | paper's claim | here | verdict |", "|---|---|---|---|"]
        lines += [f"| {c['section']} | {c['claim']} | {c['here']} | **{c['verdict']}** |" for c in claims]
        lines += ["", "The paper's wording of each claim: " + " ".join(
            f"*{RENDERERS[k][0]}*: {v}." for k, v in PAPER_CLAIMS.items() if k in S), ""]
    not_run = [name for name in RENDERERS if name not in S]
    if not_run:
        lines += [f"Sections not run in this invocation: {', '.join(not_run)}.", ""]
    cotrained = S.get("soups", {}).get("runs", {}).get("cotrained")
    if cotrained:
        lines += ["## Use the model", "", "The checkpoints are not committed; the command above rebuilds them in "
                  f"`{results['work_dir']}/runs/`:", "", "```python",
                  "import hf_advsoup  # registers the Auto classes", "from transformers import AutoModelForImageClassification",
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
    for T in S.values():  # every training-attack table (Table 2, and any other instance of its section)
        if T.get("plot") and T.get("rows") and "monitor" in T["rows"][0]:
            curves = {r["attack"]: r["monitor"] for r in T["rows"]}
            marked = [r["attack"] for r in T["rows"] if r["collapse"].get(str(results["seeds"][0]), {}).get("detected")]
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
