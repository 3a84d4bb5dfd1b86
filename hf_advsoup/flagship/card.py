"""The flagship's results, card and plots -- every number from the job records, none typed by hand.

:func:`collect` turns the jobs' per-image outcomes into ``results.json``: each accuracy as a count of test images with
its 95% Wilson interval, each comparison paired over the same images (95% paired bootstrap interval and exact McNemar
p-value, :mod:`hf_advsoup.intervals`), each goal and paper claim with the verdict its interval gives.
:func:`write_folder` writes the model's folder as its Hub repository: the co-trained model's files, ``results.json``,
the plots and ``README.md`` (the card, with a model-index of measured numbers only). :func:`rewrite_card` renders the
card and plots again from ``results.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..intervals import Accuracy, decide, images_to_resolve, paired_difference, percent_text, points, unpack_flags
from ..study.jobs import format_duration
from .preset import System

__all__ = ["GOALS", "collect", "render_card", "rewrite_card", "write_folder"]

logger = logging.getLogger(__name__)

# (key, a, b, metric, attack, boundary, direction, statement, source)
GOALS: tuple[tuple[str, str, str, str, str | None, Fraction, str, str, str], ...] = (
    ("clean_mode_vs_nominal", "clean_mode", "nominal", "clean", None, Fraction(-1, 200), "at least",
     "clean mode's clean accuracy is at least the nominal baseline's minus 0.5 points", "goal"),
    ("robust_mode_vs_adversarial", "robust_mode", "adversarial", "robust", "autoattack", Fraction(-2, 100),
     "at least", "robust mode's AutoAttack accuracy is within 2 points of the adversarial baseline's (or above)", "goal"),
    ("paper_clean_mode_vs_nominal", "clean_mode", "nominal", "clean", None, Fraction(0), "at least",
     "co-training's clean mode is at least as accurate as nominal training (Table 5: +0.9 points on ImageNet)",
     "paper"),
    ("paper_robust_mode_vs_adversarial", "robust_mode", "adversarial", "robust", "autoattack", Fraction(-4, 100),
     "at least", "robust mode is within about 4 points of adversarial training (Table 1 on ImageNet; AutoAttack)",
     "paper"),
    ("paper_robust_mode_vs_adversarial_report", "robust_mode", "adversarial", "robust", "report", Fraction(-4, 100),
     "at least", "the same, under the report attack on more images", "paper"),
    ("tradeoff_robust", "robust_mode", "clean_mode", "robust", "autoattack", Fraction(0), "above",
     "robust mode is more robust than clean mode (the trade-off the soups traverse)", "paper"),
    ("tradeoff_clean", "clean_mode", "robust_mode", "clean", None, Fraction(0), "above",
     "clean mode is more accurate on clean images than robust mode", "paper"),
)
"""The compared differences of the card: ``a - b`` of ``metric`` (robust under ``attack``), judged against
``boundary`` in ``direction`` by its paired 95% interval (:func:`hf_advsoup.intervals.decide`)."""

AMBITIONS = (("clean_mode", "clean", None, Fraction(88, 100), "clean mode's clean accuracy is at least 88%"),
             ("robust_mode", "robust", "autoattack", Fraction(70, 100),
              "robust mode's AutoAttack accuracy is at least 70%"))


# ----------------------------------------------------------------------------------------------- collecting
def _concatenated(records: dict[str, dict], prefix: str, chunk_size: int, limit: int) -> tuple[Any, Any, dict] | None:
    """The contiguous run of finished chunks ``prefix/<start>-<stop>`` from image 0: ``(clean, robust, attack info)``
    with their outcomes concatenated, or None when the first chunk is missing."""
    import numpy as np

    clean, robust, info, start = [], [], None, 0
    while start < limit:
        name = f"{prefix}/{start:05d}-{min(start + chunk_size, limit):05d}"
        record = records.get(name)
        if record is None:
            break
        result = record["result"]
        clean.append(unpack_flags(result["clean"]))
        robust.append(unpack_flags(result["robust"]))
        info = info or {**result["attack"], "forward_passes_per_example": result["forward_passes_per_example"]}
        start = result["stop"]
    if not clean:
        return None
    return np.concatenate(clean), np.concatenate(robust), info


def collect(flagship) -> dict[str, Any]:
    """``results.json`` of a finished (or partly evaluated) flagship from its job records."""

    from ..attacks import parse_epsilon

    p = flagship.preset
    records = flagship.records
    outcomes: dict[str, dict[str, Any]] = {}
    split, num_test = None, None
    for run in p.runs:
        result = records[f"clean/{run.name}"]["result"]
        split, num_test = result["split"], result["num_examples"]
        betas = list(p.betas) if run.name == "cotrained" else [run.beta]
        for beta in betas:
            outcomes.setdefault(System(run.name, beta).key, {})["clean"] = unpack_flags(
                result["outcomes"][f"{float(beta):g}"])
    attack_info: dict[str, dict] = {}
    for attack, systems, limit in (("autoattack", p.autoattack_systems(), p.autoattack_examples),
                                   ("report", p.report_systems(), p.report_examples)):
        for system in systems:
            found = _concatenated(records, f"{attack}/{system.key}", p.chunk_size, limit)
            if found is None:
                continue
            _, robust, info = found
            outcomes.setdefault(system.key, {})[attack] = robust
            attack_info[attack] = info
    for key, measured in outcomes.items():
        if "autoattack" in measured and "report" in measured:
            n = min(measured["autoattack"].size, measured["report"].size)
            measured["autoattack+report"] = measured["autoattack"][:n] & measured["report"][:n]

    epsilon = float(parse_epsilon(p.epsilon, "linf"))
    systems: dict[str, Any] = {}
    for system in p.soups + p.baselines:
        measured = outcomes.get(system.key)
        if measured is None:
            continue
        entry: dict[str, Any] = {"run": system.run, "beta": system.beta, "title": system.title,
                                 "clean": Accuracy.of(measured["clean"]).to_dict(), "robust": {}}
        for attack in ("autoattack", "report", "autoattack+report"):
            if attack in measured:
                name = (f"{attack_info['autoattack']['name']} + {attack_info['report']['name']}"
                        if attack == "autoattack+report" else attack_info[attack]["name"])
                entry["robust"][attack] = {**Accuracy.of(measured[attack]).to_dict(), "attack": name}
        headline = next((a for a in ("autoattack", "report") if a in measured), None)
        entry.update({
            "clean_accuracy": entry["clean"]["accuracy"], "clean_accuracy_interval_95": entry["clean"]["interval_95"],
            "clean_num_examples": entry["clean"]["num_examples"], "epsilon": epsilon, "norm": "linf",
        })
        if headline is not None:
            info = attack_info[headline]
            entry.update({
                "robust_accuracy": entry["robust"][headline]["accuracy"],
                "robust_accuracy_interval_95": entry["robust"][headline]["interval_95"],
                "num_examples": entry["robust"][headline]["num_examples"],
                "attack": {"name": info["name"], "version": info["version"], "description": info["description"]},
            })
        systems[system.key] = entry

    comparisons = []
    for key, a, b, metric, attack, boundary, direction, statement, source in GOALS:
        flags_a = outcomes.get(a, {}).get("clean" if metric == "clean" else attack)
        flags_b = outcomes.get(b, {}).get("clean" if metric == "clean" else attack)
        if flags_a is None or flags_b is None:
            continue
        n = min(flags_a.size, flags_b.size)
        difference = paired_difference(flags_a[:n], flags_b[:n], seed=p.seed)
        verdict = decide(difference, boundary, direction)
        comparisons.append({
            "key": key, "source": source, "statement": statement, "a": a, "b": b, "metric": metric,
            "attack": attack_info[attack]["name"] if attack else None, "boundary": float(boundary),
            "boundary_exact": str(boundary), "direction": direction, **difference.to_dict(), "verdict": verdict,
            "images_to_resolve": images_to_resolve(difference, boundary) if verdict == "unresolved" else None,
        })
    ambitions = []
    for key, metric, attack, threshold, statement in AMBITIONS:
        flags = outcomes.get(key, {}).get("clean" if metric == "clean" else attack)
        if flags is None:
            continue
        accuracy = Accuracy.of(flags)
        low, high = accuracy.interval
        verdict = ("met" if Fraction(low) >= threshold else "missed" if Fraction(high) < threshold
                   else "unresolved")
        ambitions.append({"system": key, "metric": metric, "statement": statement, "threshold": float(threshold),
                          **accuracy.to_dict(), "verdict": verdict,
                          "short_by_points": max(0.0, float(100 * (threshold - accuracy.value)))})

    defences = collect_defences(flagship, outcomes)
    runs = {}
    for run in p.runs:
        record = records[f"train/{run.name}"]
        result = record["result"]
        runs[run.name] = {"title": run.title, "argv": record["spec"]["argv"], "wall_time_s": record["wall_time_s"],
                          "history": result["history"], "recipe": result["recipe"],
                          "final_validation": result["final_validation"]}
    config = json.loads((flagship.run_dir("cotrained") / "config.json").read_text())
    return {
        "title": p.title, "name": p.name, "dataset": {"name": flagship._dataset_name(), "hub_id": p.dataset_hub_id,
                                                        "split": split, "num_test_examples": num_test},
        "epsilon": epsilon, "epsilon_text": p.epsilon, "norm": "linf",
        "model": {key: config.get(key) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                    "intermediate_size", "image_size", "patch_size", "patch_stride",
                                                    "adapter", "pooling", "drop_path_rate")},
        "num_parameters": _num_parameters(flagship.run_dir("cotrained")),
        "protocol": {"clean_examples": num_test, "report_examples": _measured(outcomes, "report"),
                     "autoattack_examples": _measured(outcomes, "autoattack"), "chunk_size": p.chunk_size,
                     "attack_seed": f"{p.seed} + the chunk's first image index",
                     "attacks": {k: v for k, v in attack_info.items()},
                     "single_interval": "95% Wilson score interval",
                     "paired_interval": "95% paired bootstrap over the test images (10,000 resamples), with the "
                                        "exact McNemar p-value"},
        "systems": systems,
        "sweep": [{"beta": beta, "key": System("cotrained", beta).key} for beta in sorted(p.betas)],
        "comparisons": comparisons, "ambitions": ambitions, "runs": runs, "defences": _defence_summary(defences),
        "_auto_results": defences,
        "per_example": {key: {metric: _pack(flags) for metric, flags in measured.items()}
                        for key, measured in outcomes.items()},
        "command": flagship.command, "machine": flagship.machine(), "recipe": str(flagship.preset.recipe),
        "notes": list(p.notes), "quick": p.quick_mode,
        "finished": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def collect_defences(flagship, outcomes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """``auto_results.json``: the per-image defences and the fixed soups and ensembles they are compared with, from
    the ``defences/<chunk>`` jobs (the contiguous chunks from image 0), each system's robust accuracy the per-image
    worst case over its attacks. A fixed soup's end-to-end attack is the main evaluation's ``report`` on the same
    images. ``None`` when the defences were not run."""
    import numpy as np
    import torch

    from ..selection import AutoSoupResult, SystemsEvaluation

    p = flagship.preset
    chunks, start = [], 0
    while start < p.defence_examples:
        record = flagship.records.get(f"defences/{start:05d}-{min(start + p.defence_chunk_size, p.defence_examples):05d}")
        if record is None:
            break
        chunks.append(record["result"])
        start = record["result"]["stop"]
    if not chunks:
        return None
    n = chunks[-1]["stop"]
    labels = dict(chunks[0]["attack_labels"])
    results = []
    for name, first in chunks[0]["systems"].items():
        clean = np.concatenate([unpack_flags(c["systems"][name]["clean"]) for c in chunks])
        attacks = {key: np.concatenate([unpack_flags(c["systems"][name]["attacks"][key]) for c in chunks])
                   for key in first["attacks"]}
        if first["family"] == "soup" and outcomes is not None:
            key = System("cotrained", first["beta"]).key
            report = outcomes.get(key, {}).get("report")
            if report is not None and report.size >= n:
                attacks["end_to_end"] = report[:n]  # the main evaluation's report attack, same images
        mean_beta = {}
        for key in first["mean_beta"]:
            mean_beta[key] = float(np.mean([c["systems"][name]["mean_beta"].get(key, np.nan) for c in chunks]))
        results.append(AutoSoupResult(
            name="auto_composite" if first["family"] == "auto" else name, beta=first["beta"],
            clean_correct=torch.from_numpy(clean), attack_correct={k: torch.from_numpy(v) for k, v in attacks.items()},
            mean_beta=mean_beta, family=first["family"], mix=first["mix"], forwards=first["forwards"]))
    choice = flagship.records["choose/mix"]["result"]
    selector = flagship.records["train/selector"]
    evaluation = SystemsEvaluation(
        dataset=f"{p.title} test split (the first {n:,} images)", num_examples=int(n),
        attacks=[{"key": k, "label": v} for k, v in labels.items()], results=results,
        settings={"epsilon": flagship.preset.epsilon, "mix_choice": choice,
                  "selector": {"argv": selector["spec"]["argv"], "train_time_s": selector["wall_time_s"],
                               "metrics": selector["result"]["metrics"]},
                  "soups_end_to_end": "the main evaluation's report attack on the same images"})
    return evaluation.to_dict(per_example=True)


def _defence_summary(defences: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the card shows of ``auto_results.json``: each system's accuracies and the comparisons."""
    if defences is None:
        return None
    keep = ("name", "family", "beta", "mix", "forwards_per_image", "clean_accuracy", "clean_accuracy_interval_95",
            "worst_case_robust_accuracy", "worst_case_robust_accuracy_interval_95", "num_examples",
            "attack_accuracies", "mean_beta")
    return {"num_examples": defences["num_examples"], "attacks": defences["attacks"],
            "results": [{k: r[k] for k in keep} for r in defences["results"]],
            "against_the_curve": defences["comparison"].get("against_the_curve", []),
            "mix_choice": defences["settings"]["mix_choice"], "selector": defences["settings"]["selector"]}


def _pack(flags) -> str:
    from ..intervals import pack_flags

    return pack_flags(flags)


def _measured(outcomes: dict[str, dict[str, Any]], attack: str) -> int:
    sizes = [measured[attack].size for measured in outcomes.values() if attack in measured]
    return min(sizes) if sizes else 0


def _num_parameters(run_dir: Path) -> int | None:
    from safetensors import safe_open

    path = run_dir / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as handle:
        return int(sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys()))


# ----------------------------------------------------------------------------------------------- writing
def write_folder(flagship, results: dict[str, Any]) -> Path:
    """The model's folder: model files of the co-trained run, the run's arguments, ``results.json``, plots, card."""
    from .engine import copy_model_files

    folder = flagship.output_dir
    copy_model_files(flagship.run_dir("cotrained"), folder)
    run_args = flagship.run_dir("cotrained") / "run_args.json"
    if run_args.is_file():
        (folder / "run_args.json").write_text(run_args.read_text())
    defences = results.pop("_auto_results", None)
    if defences is not None:
        (folder / "auto_results.json").write_text(json.dumps(defences, indent=1) + "\n")
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_plots(results, folder)
    (folder / "README.md").write_text(render_card(results))
    return folder


def rewrite_card(folder: Path) -> dict[str, Any]:
    """Render ``README.md`` and the plots of ``folder`` again from its ``results.json`` (runs nothing)."""
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --stage report_only re-renders the card of a finished run.")
    results = json.loads(path.read_text())
    write_plots(results, folder)
    (folder / "README.md").write_text(render_card(results))
    logger.info("Rewrote %s and its plots from results.json", folder / "README.md")
    return results


PLOTS = {"accuracy_vs_beta.png": "Clean and robust accuracy of the soups against beta, with 95% intervals; the two "
                                 "baselines as lines",
         "tradeoff.png": "Clean vs robust accuracy of the soups and the baselines, with 95% intervals",
         "training_curves.png": "Validation accuracy after every epoch of the three trainings"}


_BOOKKEEPING_FLAGS = ("--output_dir", "--seed", "--disable_tqdm", "--soup_table")
"""Flags the flagship adds to every training command (where it writes, its seed, quiet logs), each with one value:
not changes of the recipe."""


def _recipe_changes(argv: list[str]) -> list[str]:
    """The command-line changes of a training run to its recipe: ``argv`` without the bookkeeping flags and their
    values."""
    changes, i = [], 0
    while i < len(argv):
        if argv[i] in _BOOKKEEPING_FLAGS:
            i += 2
            continue
        changes.append(argv[i])
        i += 1
    return changes


def _monitored_clean_key(run: str) -> str:
    """The monitored clean accuracy that means something for a run: the adversarial baseline trains only its
    adversarial token (robust mode's clean accuracy); the others, clean mode's."""
    return "eval_robust_mode_clean_accuracy" if run == "adversarial" else "eval_clean_accuracy"


def write_plots(results: dict[str, Any], folder: Path) -> list[str]:
    from ..plots import plot_curves_with_intervals, plot_tradeoff_with_intervals, plot_training_curves

    systems = results["systems"]
    robust_attack = "report"

    def point(entry, metric):
        block = entry["clean"] if metric == "clean" else entry["robust"].get(robust_attack)
        return None if block is None else (block["accuracy"], *block["interval_95"])

    soups = [(row["beta"], systems[row["key"]]) for row in results["sweep"] if row["key"] in systems]
    curves = {"clean accuracy (soups)": [(b, *point(e, "clean")) for b, e in soups],
              f"robust accuracy, {robust_attack} (soups)": [(b, *point(e, "robust")) for b, e in soups
                                                             if point(e, "robust")]}
    autoattack = [(b, e["robust"]["autoattack"]["accuracy"], *e["robust"]["autoattack"]["interval_95"])
                  for b, e in soups if "autoattack" in e["robust"]]
    if autoattack:
        curves["robust accuracy, AutoAttack (soups)"] = autoattack
    references = {}
    for key in ("nominal", "adversarial"):
        if key in systems:
            references[f"{key}: clean"] = point(systems[key], "clean")
            if point(systems[key], "robust"):
                references[f"{key}: robust ({robust_attack})"] = point(systems[key], "robust")
    eps = results["epsilon_text"]
    written = [plot_curves_with_intervals(
        curves, folder / "accuracy_vs_beta.png", xlabel="beta (1 = clean mode, 0 = robust mode)",
        ylabel="accuracy on the test split (%)", references=references,
        title=f"{results['title']} test split, l_inf {eps}: clean on {results['protocol']['clean_examples']} "
              f"images, robust on {results['protocol']['report_examples']}").name]
    series: dict[str, list] = {"soups (beta 1 -> 0)": []}
    for b, e in soups:
        if point(e, "robust"):
            series["soups (beta 1 -> 0)"].append((f"{b:g}" if b in (0.0, 0.5, 1.0) else "", *point(e, "clean"),
                                                  *point(e, "robust")))
    for key in ("nominal", "adversarial"):
        if key in systems and point(systems[key], "robust"):
            series[key] = [("", *point(systems[key], "clean"), *point(systems[key], "robust"))]
    written.append(plot_tradeoff_with_intervals(
        series, folder / "tradeoff.png", xlabel="clean accuracy (%)", ylabel=f"robust accuracy, {robust_attack} (%)",
        title=f"{results['title']} test split, l_inf {eps}").name)
    training = {}
    for name, run in results["runs"].items():
        history = run["history"]
        clean_key = _monitored_clean_key(name)
        clean = [(h["epoch"], h[clean_key]) for h in history if clean_key in h]
        robust = [(h["epoch"], h["eval_robust_accuracy"]) for h in history if "eval_robust_accuracy" in h]
        if clean:
            training[f"{name}: clean"] = clean
        if robust:
            training[f"{name}: robust"] = robust
    if training:
        written.append(plot_training_curves(
            training, folder / "training_curves.png", ylabel="validation accuracy (%)",
            title="Monitoring after every epoch (validation split; robust: the training run's monitoring attack)").name)
    return written


# ----------------------------------------------------------------------------------------------- the card
def _pct(block: dict[str, Any] | None) -> str:
    return "—" if not block else percent_text(block["accuracy"], block["interval_95"])


def _front_matter(results: dict[str, Any]) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    dataset = results["dataset"]
    evals = []
    for key in ("clean_mode", "soup_0.5", "robust_mode"):
        entry = results["systems"].get(key)
        if entry is None:
            continue
        title = entry["title"]
        evals.append(EvalResult(task_type="image-classification", dataset_type=dataset["hub_id"],
                                dataset_name=results["title"], dataset_split=dataset["split"],
                                metric_type="accuracy", metric_value=round(entry["clean_accuracy"], 4),
                                metric_name=f"{title}: clean accuracy",
                                metric_args={"beta": entry["beta"], "num_examples": entry["clean_num_examples"]}))
        for attack in ("autoattack", "report"):
            block = entry["robust"].get(attack)
            if block is None:
                continue
            evals.append(EvalResult(
                task_type="image-classification", dataset_type=dataset["hub_id"], dataset_name=results["title"],
                dataset_split=dataset["split"], metric_type="accuracy", metric_value=round(block["accuracy"], 4),
                metric_name=f"{title}: robust accuracy ({'AutoAttack' if attack == 'autoattack' else 'report'}, "
                            f"l_inf {results['epsilon_text']})",
                metric_config=f"linf,eps={results['epsilon']:g},{attack}",
                metric_args={"beta": entry["beta"], "num_examples": block["num_examples"], "attack": block["attack"]}))
    data = ModelCardData(model_name=results["name"], license="apache-2.0", library_name="transformers",
                         pipeline_tag="image-classification", datasets=[dataset["hub_id"]], metrics=["accuracy"],
                         tags=["adversarial-robustness", "model-soups", "vision-transformer", "hf_advsoup"],
                         eval_results=evals or None)
    return f"---\n{data.to_yaml()}\n---\n"


SIDES = {"at least": "≥", "at most": "≤", "above": ">", "below": "<"}


def _verdict_text(c: dict[str, Any]) -> str:
    """``**reproduced** (claim: difference ≥ -0.5)``, with what an unresolved verdict would need."""
    text = f"**{c['verdict']}** (claim: difference {SIDES[c['direction']]} {points(Fraction(c['boundary_exact']))})"
    if c["verdict"] == "unresolved":
        need = c.get("images_to_resolve")
        text += (f"; would need about {need:,} images at this difference" if need
                 else "; the difference sits on the boundary: more images would not resolve it")
    return text


def render_card(results: dict[str, Any]) -> str:
    """The card (``README.md``) from ``results.json``."""
    s = results["systems"]
    p = results["protocol"]
    eps = results["epsilon_text"]
    model = results["model"]
    lines = [_front_matter(results)]
    lines += [f"# {results['name']}: a co-trained dual-token ViT on {results['title']} (hf_advsoup)", ""]
    if results.get("quick"):
        lines += ["> **Quick mode**: a smoke test of the pipeline. The numbers below mean nothing.", ""]
    headline = []
    for key in ("clean_mode", "soup_0.5", "robust_mode"):
        if key in s:
            robust = s[key]["robust"].get("autoattack") or s[key]["robust"].get("report")
            headline.append(f"{s[key]['title']}: {_pct(s[key]['clean'])} clean, {_pct(robust)} robust")
    lines += [
        "A Vision Transformer with two classification tokens, co-trained on clean images through one and on PGD-2 "
        f"adversarial images (l_inf {eps}) through the other, all other weights shared (\"Revisiting adapters with "
        "adversarial training\", Rebuffi, Croce & Gowal, ICLR 2023). `beta` mixes the tokens: one model, one forward "
        "pass, anywhere between clean mode (`beta=1`) and robust mode (`beta=0`).", "",
        f"On the {p['clean_examples']:,} {results['dataset']['split']} images of {results['title']} (accuracy "
        f"[95% interval]; robust: AutoAttack, standard version, on the first {p['autoattack_examples']:,}): "
        + "; ".join(headline) + ".", "",
        "```python",
        "import hf_advsoup  # registers the model with the Auto classes (or pass trust_remote_code=True)",
        "from transformers import AutoModelForImageClassification, AutoImageProcessor",
        "",
        f'model = AutoModelForImageClassification.from_pretrained("{results["name"]}", beta=0.5)  # or a local clone',
        f'processor = AutoImageProcessor.from_pretrained("{results["name"]}")',
        "```", "",
        "## Results",
        "",
        f"Test split of {results['title']}, l_inf radius {eps} in [0, 1] pixel units. Clean accuracy on all "
        f"{p['clean_examples']:,} test images; robust accuracy under full AutoAttack (standard version) on the first "
        f"{p['autoattack_examples']:,} and under the `report` attack (PGD-40 + MultiTargeted towards 9 classes) on "
        f"the first {p['report_examples']:,}; AA+MT is the per-image worst case of both (the paper's AA+MT). "
        "Brackets: 95% Wilson score intervals.", "",
        "| system | clean accuracy | AutoAttack | AA+MT | report |",
        "|---|---|---|---|---|",
    ]
    for key in ("clean_mode", "soup_0.5", "robust_mode", "nominal", "adversarial"):
        if key in s:
            r = s[key]["robust"]
            lines.append(f"| {s[key]['title']} | {_pct(s[key]['clean'])} | {_pct(r.get('autoattack'))} | "
                         f"{_pct(r.get('autoattack+report'))} | {_pct(r.get('report'))} |")
    lines += ["", "### Paper claims and goals at this scale", "",
              "Each difference is paired over the same test images: 95% paired bootstrap interval (10,000 resamples "
              "of the images) and the exact McNemar p-value on the discordant images. A claim is *reproduced* when "
              "the whole interval is on its side of the boundary, *not reproduced* when the whole interval is on "
              "the other side, *unresolved* otherwise; all comparisons are between exact fractions of image "
              "counts.", "",
              "| claim | source | difference (points) [95% interval] | images | McNemar p | verdict |",
              "|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        what = "clean accuracy" if c["metric"] == "clean" else f"robust accuracy, {c['attack']}"
        lines.append(f"| {c['statement']} ({s[c['a']]['title']} − {s[c['b']]['title']}, {what}) | {c['source']} | "
                     f"{c['text']} | {c['num_examples']:,} | {c['mcnemar_exact_p']:.2g} | {_verdict_text(c)} |")
    for a in results["ambitions"]:
        short = (f"; short by {a['short_by_points']:.1f} points" if a["verdict"] != "met" and a["short_by_points"] > 0
                 else "")
        lines.append(f"| {a['statement']} | ambition | {percent_text(a['accuracy'], a['interval_95'])} | "
                     f"{a['num_examples']:,} | — | **{a['verdict']}**{short} |")
    lines += _next_step(results)
    lines += ["", "### The soup sweep", "",
              f"Every beta of the sweep: clean accuracy on {p['clean_examples']:,} images, robust accuracy under "
              f"`report` on {p['report_examples']:,} (AutoAttack where run).", "",
              "| beta | clean accuracy | report | AutoAttack |", "|---|---|---|---|"]
    for row in sorted(results["sweep"], key=lambda r: -r["beta"]):
        entry = s.get(row["key"])
        if entry is not None:
            lines.append(f"| {row['beta']:g} | {_pct(entry['clean'])} | {_pct(entry['robust'].get('report'))} | "
                         f"{_pct(entry['robust'].get('autoattack'))} |")
    lines += _defences_section(results)
    lines += [""]
    for name, title in PLOTS.items():
        lines += [f"![{title}]({name})", "", f"*{title}.*", ""]
    lines += _how_made(results)
    lines += ["## Citation", "", "```bibtex", "@inproceedings{rebuffi2023revisiting,",
              "  title={Revisiting adapters with adversarial training},",
              "  author={Rebuffi, Sylvestre-Alvise and Croce, Francesco and Gowal, Sven},",
              "  booktitle={International Conference on Learning Representations (ICLR)},", "  year={2023}", "}",
              "```", ""]
    del model
    return "\n".join(lines)


def _defences_section(results: dict[str, Any]) -> list[str]:
    """The per-image defences (``auto_results.json``): each system's clean and worst-case robust accuracy, and each
    defence against the fixed-soup curve with its paired interval."""
    d = results.get("defences")
    if not d:
        return []
    labels = {a["key"]: a["label"] for a in d["attacks"]}
    keys = list(labels)
    lines = ["", "### Per-image defences: `beta=\"auto\"` and mixed outputs", "",
             f"On the first {d['num_examples']:,} test images (`auto_results.json`): `auto_composite` is the selector "
             "trained against the system it defends (adaptive smoothing's composite objective, backbone frozen); "
             "`mix_*` mix the two modes' probabilities after MixedNUTS' transform of robust mode's logits, chosen on "
             "validation (two forwards). Robust accuracy is the per-image worst case over every attack run on the "
             "system (a dash: not run on it; fixed soups' end-to-end attack is the main evaluation's `report` on the "
             "same images). Brackets: 95% Wilson intervals.", "",
             "| system | forwards | clean | " + " | ".join(labels[k] for k in keys) + " | worst case |",
             "|---|---|---|" + "---|" * len(keys) + "---|"]
    for r in d["results"]:
        cells = [f"{100 * r['attack_accuracies'][k]:.1f}%" if k in r["attack_accuracies"] else "—" for k in keys]
        lines.append(f"| {r['name']} | {r['forwards_per_image']:.2g} | "
                     f"{percent_text(r['clean_accuracy'], r['clean_accuracy_interval_95'])} | " + " | ".join(cells)
                     + " | **" + percent_text(r["worst_case_robust_accuracy"],
                                              r["worst_case_robust_accuracy_interval_95"]) + "** |")
    lines += ["", "Each defence against the fixed-soup curve: the most accurate fixed soup at equal or higher "
              "worst-case robust accuracy, and the paired difference of clean accuracy (95% paired bootstrap "
              "interval). *Above the curve* means at least 2 points more clean accuracy with the interval above 0.",
              ""]
    for entry in d["against_the_curve"]:
        if entry.get("best_fixed") is None:
            lines.append(f"- `{entry['name']}`: {entry.get('note', 'no fixed soup is as robust')}.")
            continue
        best, diff = entry["best_fixed"], entry["clean_difference"]
        lines.append(f"- `{entry['name']}` ({100 * entry['clean_accuracy']:.1f}% clean, "
                     f"{100 * entry['worst_case_robust_accuracy']:.1f}% worst case) vs `{best['name']}` "
                     f"({100 * best['clean_accuracy']:.1f}%, {100 * best['worst_case_robust_accuracy']:.1f}%): "
                     f"clean {diff['text']}: **{'above' if entry['above_the_curve'] else 'not above'} the curve**.")
    above = [e for e in d["against_the_curve"] if e.get("above_the_curve")]
    if not above:
        weakest = []
        for r in d["results"]:
            if r["family"] in ("auto", "mix") and r["attack_accuracies"]:
                key = min(r["attack_accuracies"], key=r["attack_accuracies"].get)
                weakest.append(f"`{r['name']}` falls furthest under {labels.get(key, key)} "
                               f"({100 * r['attack_accuracies'][key]:.1f}%)")
        lines += ["", "No per-image defence lies above the fixed-soup curve on this model"
                  + (": " + "; ".join(weakest) + "." if weakest else ".")
                  + " docs/selection.md says which to use when."]
    return lines


def _next_step(results: dict[str, Any]) -> list[str]:
    """What the monitoring says about more training: the co-trained run's validation accuracies over its last
    epochs (still rising -> a longer schedule is the next budget step)."""
    run = results["runs"].get("cotrained")
    if not run:
        return []
    history = [h for h in run["history"] if "eval_clean_accuracy" in h]
    if len(history) < 3:
        return []
    last, before = history[-1], history[-3]
    clean_gain = 100 * (last["eval_clean_accuracy"] - before["eval_clean_accuracy"])
    robust_gain = (100 * (last["eval_robust_accuracy"] - before["eval_robust_accuracy"])
                   if "eval_robust_accuracy" in last and "eval_robust_accuracy" in before else None)
    epochs = last["epoch"] - before["epoch"]
    text = (f"Over its last {epochs:g} epochs the co-trained run's validation accuracy moved by {clean_gain:+.1f} "
            "points (clean mode, clean)")
    if robust_gain is not None:
        text += f" and {robust_gain:+.1f} points (robust mode, monitoring attack)"
    rising = clean_gain > 0.3 or (robust_gain or 0) > 0.3
    text += (": still rising, so the next budget step is a longer schedule (twice the epochs, twice the wall time) "
             "before a larger model." if rising else ": flat, so the next budget step is a larger model (or more "
             "data augmentation), not more epochs.")
    return ["", text]


def _how_made(results: dict[str, Any]) -> list[str]:
    model = results["model"]
    runs = results["runs"]
    p = results["protocol"]
    lines = ["## How it was made", "",
             f"- **Model**: ViT, hidden size {model['hidden_size']}, {model['num_hidden_layers']} blocks, "
             f"{model['num_attention_heads']} heads, MLP {model['intermediate_size']}, {model['image_size']}x"
             f"{model['image_size']} px, patch {model['patch_size']}"
             + (f" (stride {model['patch_stride']})" if model.get("patch_stride") else "")
             + f"; adapter `{model['adapter']}` (two classification tokens), pooling `{model['pooling']}`; "
             f"{results['num_parameters']:,} parameters." if results.get("num_parameters") else "",
             f"- **Recipe**: `{results['recipe']}` (the co-trained model); the baselines are the same recipe with "
             "`--alpha 1` (nominal) and `--alpha 0` (adversarial, PGD-2) and the epochs that give them the same "
             "wall time (docs/flagship.md).", "",
             "| run | command-line changes | epochs | wall time | final validation (clean / robust, monitoring; the mode "
             "each run trains) |",
             "|---|---|---|---|---|"]
    for name, run in runs.items():
        argv = run["argv"]
        changes = " ".join(_recipe_changes(argv[1:])) or "—"
        final = run["final_validation"]
        robust = final.get("eval_robust_accuracy") if name != "nominal" else None
        lines.append(f"| {run['title']} | `{changes}` | {run['recipe'].get('num_train_epochs')} | "
                     f"{format_duration(run['wall_time_s'])} | {100 * final.get(_monitored_clean_key(name), math.nan):.1f}%"
                     f" / {'—' if robust is None else f'{100 * robust:.1f}%'} |")
    stages = results.get("timings", {}).get("stages", {})
    lines += ["", f"- **Evaluation**: test split; clean on {p['clean_examples']:,} images, `report` on the first "
              f"{p['report_examples']:,}, AutoAttack on the first {p['autoattack_examples']:,}, in chunks of "
              f"{p['chunk_size']} images (attack seed: {p['attack_seed']})."]
    for attack, info in p.get("attacks", {}).items():
        lines.append(f"  - `{attack}`: {info['description']} ({info['version']}; "
                     f"{info['forward_passes_per_example']:.0f} forward passes per attacked image in the first chunk)")
    if stages:
        lines += ["", "| stage | time |", "|---|---|"]
        lines += [f"| {stage} | {format_duration(seconds)} |" for stage, seconds in stages.items()]
        lines += ["", "Training runs side by side, two at a time (one per core), so their wall times overlap; an "
                  "evaluation's time is the sum of its jobs' wall times (core time)."]
    lines += ["", f"- **Machine**: {results['machine']}.", f"- **Command**: `{results['command']}` (resumable: run "
              "again after an interruption, it continues).", f"- **Finished**: {results['finished']}."]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return lines + [""]
