"""The study's data: one fixed train / validation / test layout, saved once and shared by every run and seed.

:func:`prepare_study_data` loads the preset's data set with :func:`hf_advsoup.data.load_image_dataset`, gives a
data set without a test split one (its validation split; a new validation split is carved out of train), takes the
seeded subsets of the preset, and saves the result with ``save_to_disk`` in ``<work_dir>/data/``, where
``scripts/cotrain.py`` reads it (``--dataset_name <folder>``). The transfer section's class halves are saved the
same way (:meth:`StudyData.subset_path`). Evaluation reads the saved splits back as tensors
(:func:`load_eval_tensors`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StudyData", "class_subset", "load_eval_tensors", "prepare_study_data"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def class_subset(dataset_dict, classes: list[int] | tuple[int, ...]):
    """The examples whose label is in ``classes``, relabelled ``0..len(classes)-1`` with the original names, in every
    split (the transfer section's class halves)."""
    import datasets

    names = dataset_dict["train"].features["label"].names
    bad = [c for c in classes if not 0 <= c < len(names)]
    if bad:
        raise ValueError(f"Classes {bad} do not exist: the data set has {len(names)} classes (0-{len(names) - 1}).")
    keep = set(classes)
    mapping = {c: i for i, c in enumerate(classes)}
    label = datasets.ClassLabel(names=[names[c] for c in classes])
    out = {}
    for split, ds in dataset_dict.items():
        ds = ds.filter(lambda y: y in keep, input_columns="label")
        ds = ds.map(lambda y: {"label": mapping[y]}, input_columns="label")
        out[split] = ds.cast_column("label", label)
    return datasets.DatasetDict(out)


@dataclass
class StudyData:
    """Where the study's splits are saved and what they hold.

    Attributes:
        path: ``save_to_disk`` folder with ``train``, ``validation`` and ``test``.
        counts: images per split.
        class_names: label names (index = label).
        provenance: where each split comes from (source split, carve-out, subset), for the card.
        subsets: ``{key: folder}`` of the class subsets saved so far.
    """

    path: str
    counts: dict[str, int]
    class_names: list[str]
    provenance: dict[str, str]
    subsets: dict[str, str] = field(default_factory=dict)

    def subset_path(self, classes: tuple[int, ...] | list[int]) -> str:
        """The folder of the study's splits restricted to ``classes`` (relabelled 0..k-1), saved on first use."""
        import datasets

        key = "-".join(str(c) for c in classes)
        folder = Path(f"{self.path}_classes{key}")
        if not (folder / "dataset_dict.json").exists():
            subset = class_subset(datasets.load_from_disk(self.path), list(classes))
            subset.save_to_disk(str(folder))
            logger.info("Saved classes %s of the study's data to %s (%s)", key, folder,
                        {k: len(v) for k, v in subset.items()})
        self.subsets[key] = str(folder)
        return str(folder)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "counts": self.counts, "class_names": self.class_names,
                "provenance": self.provenance, "subsets": self.subsets}


def prepare_study_data(preset, work_dir: str | Path) -> StudyData:
    """Load, split, subsample and save the data of ``preset`` (a :class:`~hf_advsoup.study.presets.StudyPreset`)
    under ``<work_dir>/data/``, or reuse the folder saved by an earlier invocation with the same settings."""
    import datasets

    from ..data import DataArguments, load_image_dataset

    settings = {"dataset_name": preset.dataset_name, "split_seed": preset.split_seed,
                "train_samples": preset.train_samples, "validation_samples": preset.validation_samples,
                "test_samples": preset.test_samples, "test_from_validation": preset.test_from_validation,
                "validation_fraction": preset.validation_fraction if preset.test_from_validation else None}
    slug = "".join(c if c.isalnum() else "_" for c in preset.dataset_name)
    folder = Path(work_dir) / "data" / f"{slug}_{_fingerprint(settings)}"
    record = folder / "study_data.json"
    if record.exists() and (folder / "dataset_dict.json").exists():
        saved = json.loads(record.read_text())
        logger.info("Reusing the study's data in %s (%s)", folder, saved["counts"])
        return StudyData(path=str(folder), counts=saved["counts"], class_names=saved["class_names"],
                         provenance=saved["provenance"])

    loaded = load_image_dataset(DataArguments(dataset_name=preset.dataset_name, split_seed=preset.split_seed))
    report = getattr(loaded, "report", None)
    sources = dict(report.splits) if report is not None else {s: s for s in loaded}
    splits = dict(loaded)
    provenance = {s: str(sources.get(s, s)) for s in splits}
    if "test" not in splits:
        if not preset.test_from_validation:
            raise ValueError(f"{preset.dataset_name} has no test split ({', '.join(splits)}): the study reports on "
                             "test. Set test_from_validation=True in the study preset to use its validation split "
                             "as test and carve a new validation split out of train.")
        splits["test"] = splits.pop("validation")
        provenance["test"] = provenance.pop("validation")
        carved = splits["train"].train_test_split(test_size=preset.validation_fraction, seed=preset.split_seed,
                                                  stratify_by_column="label")
        splits["train"], splits["validation"] = carved["train"], carved["test"]
        provenance["validation"] = (f"{provenance['train']}[stratified {preset.validation_fraction:g} carve-out, "
                                    f"seed {preset.split_seed}]")
    for split, limit in (("train", preset.train_samples), ("validation", preset.validation_samples),
                         ("test", preset.test_samples)):
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].shuffle(seed=preset.split_seed).select(range(limit))
            provenance[split] += f", seeded random subset of {limit}"
    result = datasets.DatasetDict({s: splits[s] for s in SPLITS})
    folder.parent.mkdir(parents=True, exist_ok=True)
    result.save_to_disk(str(folder))
    counts = {s: len(result[s]) for s in SPLITS}
    names = list(result["train"].features["label"].names)
    record.write_text(json.dumps({"settings": settings, "counts": counts, "class_names": names,
                                  "provenance": provenance}, indent=2))
    logger.info("Saved the study's data to %s: %s", folder, counts)
    return StudyData(path=str(folder), counts=counts, class_names=names, provenance=provenance)


def load_eval_tensors(data_path: str, split: str, processor, limit: int | None = None):
    """``(pixel_values (N, 3, H, W) float32 normalized, labels (N,) int64)`` of the first ``limit`` images of
    ``split`` of a saved study folder, through the evaluation transform of ``processor``."""
    import datasets

    from ..data import build_transforms, collate_fn

    ds = datasets.load_from_disk(data_path)[split]
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    ds = ds.with_transform(build_transforms(processor, train=False))
    batch = collate_fn([ds[i] for i in range(len(ds))])
    return batch["pixel_values"], batch["labels"]
