#!/usr/bin/env python
"""Evaluate adversarial model soups of one co-trained checkpoint on one or more data sets (Rebuffi et al., ICLR
2023, Section 5.2, appendix D): clean and robust accuracy over a beta grid for soups and ensembles, optionally the
2-D landscape and the two-network soup baseline, and the selection of a soup.

Launch::

    # Clean accuracy of 11 soups and ensembles + robust accuracy with the `report` attack (PGD-40 + MultiTargeted)
    # on the first 1000 examples (the defaults), on a saved run.
    python scripts/evaluate_soups.py --model_name_or_path runs/digits --datasets digits --output_dir runs/digits/soups

    # Several data sets (Table 3's best soup by mean accuracy), AutoAttack, extrapolation, the 2-D landscape
    # attacked with PGD-2 (Figure 8), and "the most robust soup with >= 80% clean accuracy".
    python scripts/evaluate_soups.py --model_name_or_path runs/imagenet \\
        --datasets imagenet-1k:validation variant-r=path/to/imagenet-r:test --robust_datasets imagenet-1k \\
        --attack autoattack --extrapolate_betas -0.05 1.05 --landscape --landscape_attack pgd2 \\
        --min_clean_accuracy 0.8 --output_dir runs/imagenet/soups

    # beta="auto" (a model with a trained selector, scripts/train_selector.py) against adaptive attacks, next to the
    # fixed soups attacked the same way on the same 500 examples (docs/selection.md).
    python scripts/evaluate_soups.py --model_name_or_path runs/fmnist-auto --datasets fashion_mnist:test \
        --epsilon 0.1 --max_robust_examples 500 --auto --output_dir runs/fmnist-auto/soups

    # The baseline of Table 9: soups of all weights of two independently trained networks.
    python scripts/evaluate_soups.py --model_name_or_path runs/cotrained --independent_nominal_model runs/nominal \\
        --independent_adversarial_model runs/adversarial --datasets cifar10:test --output_dir runs/table9

Data sets are given as ``[NAME=]SOURCE[:SPLIT]``: SOURCE is anything ``hf_advsoup.data.load_eval_split``
accepts (a preset such as ``digits`` or ``cifar10``, a Hub id, a local folder), SPLIT ``validation``, ``test`` or
``train`` (default: a preset's test split when it has one, else its eval split; otherwise ``test``, else a
validation split, else the only split). Only that split is loaded: a data set needs no train split, and for a Hub id
nothing else is downloaded (``imagenet-1k:validation`` fetches the 50k validation images, not the training set).

Classes are matched to the model's ``config.id2label`` by name (``hf_advsoup.data.labels``; integers compared as
numbers, so the folders ``0``..``999`` of ImageNet-V2 are the model's classes 0..999 although ``datasets`` orders
them as strings). An evaluation set may hold a subset of the model's classes (ImageNet-A and ImageNet-R: 200 of
1,000): the model's logits are then restricted to those classes, for clean and robust accuracy alike. A class the
model does not have is an error.

Images are prepared by the model's saved image processor's geometry (``build_transforms``): a plain resize, or at
ImageNet size the resize-and-centre-crop it records (``--eval_crop_pct`` overrides; see docs/data.md).

Writes into ``--output_dir``: ``soup_results.json`` (every number with its settings: threat model, examples, forward
passes), ``soup_results.csv``, ``soup_results.md`` and PNG plots (``tradeoff.png``, ``accuracy_vs_beta.png``,
``landscape.png``); with ``--auto`` also ``auto_results.json`` (per-example outcomes) and ``auto_results.md``:
``beta="auto"`` and the fixed soups ``--auto_fixed_betas`` under the adaptive attacks of
:func:`hf_advsoup.selection.evaluate_auto_soup` on the robust examples of the first robust data set.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
)

from hf_advsoup import AdvSoupViTForImageClassification
from hf_advsoup.cli import check_output_dir, run
from hf_advsoup.data import (
    DATASET_PRESETS,
    build_transforms,
    collate_fn,
    load_eval_split,
)
from hf_advsoup.data.labels import match_class_names
from hf_advsoup.hub_access import check_model_source
from hf_advsoup.selection import AutoEvaluationArguments, evaluate_auto_soup
from hf_advsoup.soups import (
    SoupEvaluation,
    SoupEvaluationArguments,
    collect_examples,
    evaluate_soups,
    restrict_logits,
)

logger = logging.getLogger("evaluate_soups")

SPLITS = ("validation", "test", "train")


@dataclass
class EvaluateSoupsArguments:
    """Which checkpoint, which data, where to write."""

    model_name_or_path: str = field(metadata={"help": "A co-trained AdvSoupViT checkpoint (folder or Hub id)."})
    output_dir: str = field(metadata={"help": "Where the JSON, CSV, markdown table and plots are written."})
    datasets: list[str] = field(
        default_factory=lambda: ["digits"],
        metadata={"help": "Evaluation data sets as [NAME=]SOURCE[:SPLIT] (e.g. cifar10:test, "
                  "imagenet-r=/data/imagenet-r:test). Default: the embedded digits (offline)."},
    )
    max_eval_samples_per_dataset: int | None = field(
        default=None,
        metadata={"help": "Load only a seeded random subset of this many examples per data set (load_eval_split's "
                  "max_samples, the same subset as load_image_dataset's max_eval_samples; --max_eval_examples takes "
                  "the first N instead)."},
    )
    verify_images: bool = field(
        default=False,
        metadata={"help": "Decode every image of the evaluated split once at load time and drop (count, log) corrupt "
                  "ones. Off by default to keep loading fast; corrupt images are skipped by the collator anyway."},
    )
    independent_nominal_model: str | None = field(
        default=None, metadata={"help": "Table 9 baseline: the nominally trained network (beta = 1)."}
    )
    independent_adversarial_model: str | None = field(
        default=None, metadata={"help": "Table 9 baseline: the adversarially trained network (beta = 0)."}
    )
    eval_crop_pct: float | None = field(
        default=None,
        metadata={"help": "Resize the shorter side to size / eval_crop_pct, then centre-crop the model's size (0.875: "
                  "the ImageNet protocol); 1: a plain resize. Default: what the model's image processor records "
                  "(do_center_crop), else 0.875 for inputs >= 128 px and 1 below."},
    )
    device: str | None = field(
        default=None, metadata={"help": "torch device; default: cuda when available, else cpu."}
    )
    plots: bool = field(default=True, metadata={"help": "Write the PNG plots."})


def parse_dataset_spec(spec: str) -> tuple[str, str, str | None]:
    """``[NAME=]SOURCE[:SPLIT]`` -> ``(name, source, split or None)``. A ``:`` followed by something that is not a
    canonical split stays part of the source (e.g. a Windows drive or a Hub id with a colon-free name)."""
    name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    source, split = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and tail in SPLITS:
        source, split = head, tail
    if not source:
        raise ValueError(f"Empty data set source in {spec!r}; expected [NAME=]SOURCE[:SPLIT].")
    return name or source, source, split


def load_eval_data(spec: str, processor, batch_size: int, id2label: dict[int, str], args: EvaluateSoupsArguments):
    """One evaluation ``DataLoader`` (the eval transform at the model's geometry), its description and the model
    class of each of its labels (``None`` when they are the model's classes in the model's order).

    Loads only the requested split (``load_eval_split``) and matches its classes to ``id2label`` by name
    (``match_class_names``): another order or a subset of the model's classes is fine, a class the model does not
    have is a ``ValueError`` naming a few.
    """
    name, source, split = parse_dataset_spec(spec)
    dataset = load_eval_split(source, split, max_samples=args.max_eval_samples_per_dataset,
                              verify_images=args.verify_images)
    report = dataset.report
    split = next(iter(report.splits))  # the split actually loaded (the default when none was named)
    class_names = dataset.features["label"].names
    class_indices = match_class_names(class_names, id2label, dataset=f"data set {name!r}")
    if class_indices == list(range(len(id2label))):
        class_indices = None
    elif len(class_indices) < len(id2label):
        logger.info("Data set %r has %d of the model's %d classes: predictions are restricted to them.", name,
                    len(class_indices), len(id2label))
    else:
        logger.info("Data set %r orders the model's classes differently (e.g. its label %d, %r, is the model's class "
                    "%d): matched by name.", name, *next((i, class_names[i], c) for i, c in enumerate(class_indices)
                                                       if i != c))
    transform = build_transforms(processor, train=False, crop_pct=args.eval_crop_pct)
    dataset.set_transform(transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    hub_id = None
    if report.source.startswith("hub:"):
        hub_id = report.source[4:]
    elif report.source.startswith("preset:"):
        hub_id = DATASET_PRESETS[report.source[7:]].hub_id
    info = {"name": name, "source": source, "split": split, "hub_id": hub_id, "num_examples": len(dataset),
            "origin": report.source, "location": report.location, "source_split": report.splits[split],
            "num_corrupt_images_removed": sum(report.num_corrupt_images.values()),
            "num_classes": len(class_names),
            "class_indices": class_indices,
            "eval_resize": transform.eval_resize}
    return name, loader, info, class_indices


def check_arguments(args: EvaluateSoupsArguments, soup_args: SoupEvaluationArguments | None = None) -> None:
    """Everything that can be checked before a model or an image is loaded: the output folder (not a file, writable),
    the models (a folder with config.json, or a Hub id that is reachable or cached), the Table 9 pair, the data set
    specs and their names. A mistake costs seconds, not a finished evaluation."""
    check_output_dir(args.output_dir)
    check_model_source(args.model_name_or_path)
    if (args.independent_nominal_model is None) != (args.independent_adversarial_model is None):
        raise SystemExit("The Table 9 baseline needs both --independent_nominal_model and "
                         "--independent_adversarial_model.")
    check_model_source(args.independent_nominal_model, flag="--independent_nominal_model")
    check_model_source(args.independent_adversarial_model, flag="--independent_adversarial_model")
    names = [parse_dataset_spec(spec)[0] for spec in args.datasets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SystemExit(f"Data set name {repeated[0]!r} is used twice; name them with NAME=SOURCE.")
    robust = list(soup_args.robust_datasets or []) if soup_args is not None else []
    unknown = [name for name in robust if name not in names and name.lower() != "all"]
    if unknown:
        raise ValueError(f"--robust_datasets {unknown} are not among the data sets: {', '.join(names)}.")


def main(argv: list[str] | None = None) -> SoupEvaluation:
    parser = HfArgumentParser((EvaluateSoupsArguments, SoupEvaluationArguments, AutoEvaluationArguments))
    script_args, soup_args, auto_args = parser.parse_args_into_dataclasses(
        args=list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_arguments(script_args, soup_args)
    torch.manual_seed(soup_args.seed)
    device = torch.device(script_args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model = AutoModelForImageClassification.from_pretrained(script_args.model_name_or_path).to(device).eval()
    if not isinstance(model, AdvSoupViTForImageClassification):
        raise SystemExit(f"{script_args.model_name_or_path} is a {type(model).__name__}, not a co-trained "
                         "AdvSoupViTForImageClassification: there are no soups to evaluate.")
    if auto_args.auto and model.selector is None:
        raise SystemExit(f"--auto evaluates beta='auto', and {script_args.model_name_or_path} has no soup selector: "
                         "train one with scripts/train_selector.py (docs/selection.md).")
    processor = AutoImageProcessor.from_pretrained(script_args.model_name_or_path)

    datasets, infos, class_indices = {}, [], {}
    for spec in script_args.datasets:
        name, loader, info, indices = load_eval_data(spec, processor, soup_args.batch_size, model.config.id2label,
                                                     script_args)
        datasets[name] = loader
        infos.append(info)
        if indices is not None:
            class_indices[name] = indices

    independent = None
    if script_args.independent_nominal_model is not None:
        independent = tuple(
            AutoModelForImageClassification.from_pretrained(path).to(device).eval()
            for path in (script_args.independent_nominal_model, script_args.independent_adversarial_model)
        )

    normalization = None
    if soup_args.robust or auto_args.auto:
        from hf_advsoup.attacks import Normalization

        normalization = Normalization.from_processor(processor)
    result = evaluate_soups(model, datasets, soup_args, normalization=normalization, independent_models=independent,
                            class_indices=class_indices)
    result.settings.update({
        "model_name_or_path": script_args.model_name_or_path,
        "datasets_info": infos,
        "independent_models": [script_args.independent_nominal_model, script_args.independent_adversarial_model]
        if independent else None,
    })

    output_dir = Path(script_args.output_dir)
    auto = None
    if auto_args.auto:
        # The examples of the fixed-beta robust rows: the first robust data set, its first max_robust_examples.
        name = (soup_args.robust_datasets or list(datasets))[0]
        if name not in datasets:
            name = next(iter(datasets))
        examples = collect_examples(datasets[name], soup_args.max_robust_examples, soup_args.batch_size)
        with restrict_logits(model, class_indices.get(name)):
            auto = evaluate_auto_soup(
                model, examples, auto_args, normalization=normalization, epsilon=soup_args.epsilon,
                attack_steps=soup_args.attack_steps,
                fixed_betas=soup_args.all_betas if auto_args.auto_fixed_betas is None else auto_args.auto_fixed_betas,
                dataset_name=name, batch_size=soup_args.batch_size, seed=soup_args.seed, progress=soup_args.progress,
            )
        result.settings["auto"] = {"comparison": auto.comparison(), "file": "auto_results.json"}
    paths = result.save(output_dir)
    if auto is not None:
        paths.update(auto.save(output_dir))
    if script_args.plots:
        from hf_advsoup.plots import plot_all

        paths.update(plot_all(result, output_dir))
    for kind, path in paths.items():
        logger.info("Wrote %s: %s", kind, path)
    print(result.to_markdown())
    if auto is not None:
        print(auto.to_markdown())
    return result


if __name__ == "__main__":
    run(main)
