"""Matching an evaluation set's classes to a model's classes by name.

Why by name: a label index means nothing across data sets. ``datasets``' ``imagefolder`` orders class folders as
strings, so the folders ``0``..``11`` become labels ``0, 1, 10, 11, 2, ...``: folder ``10`` is label 2, while a model
trained with the names ``"0"``..``"11"`` in numeric order predicts it as class 10. And evaluation sets such as
ImageNet-A and ImageNet-R hold 200 of ImageNet's 1,000 classes: their label ``i`` is the ``i``-th of *their* classes.

:func:`match_class_names` gives, for each evaluation label, the model's class with the same name; evaluation then
reads the model's logits at those classes only, in the evaluation set's label order (``logits[:, class_indices]``:
what the ImageNet-A/-R authors do with their 200-class mask), for clean and robust accuracy alike
(:func:`hf_advsoup.soups.restrict_logits`).

Names are compared after trimming surrounding whitespace and case-folding; names that are integers are compared as
numbers (``"010"`` is class 10). A model without class names (transformers' default ``LABEL_0``..``LABEL_{N-1}``)
has the numbers ``0``..``N-1`` as names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = ["class_name_key", "match_class_names"]

_INTEGER = re.compile(r"[+-]?\d+")
_DEFAULT_NAME = re.compile(r"LABEL_(\d+)")


def class_name_key(name: object) -> int | str:
    """The comparison key of a class name: its value for an integer (``" 010 "`` -> 10), else the trimmed,
    case-folded string."""
    text = str(name).strip()
    return int(text) if _INTEGER.fullmatch(text) else " ".join(text.split()).casefold()


def _model_keys(id2label: Mapping[int, str]) -> tuple[dict[int | str, int], bool]:
    """``{key: model class index}`` and whether the model has real names (not transformers' ``LABEL_i``)."""
    labels = {int(index): str(name) for index, name in id2label.items()}
    unnamed = all(_DEFAULT_NAME.fullmatch(name) and int(name[6:]) == index for index, name in labels.items())
    keys: dict[int | str, int] = {}
    duplicates = []
    for index in sorted(labels):
        key = index if unnamed else class_name_key(labels[index])
        if key in keys:
            duplicates.append((labels[keys[key]], labels[index]))
        keys[key] = index
    if duplicates:
        raise ValueError(
            "The model's class names are ambiguous once compared (trimmed, case-folded, integers as numbers): "
            + ", ".join(f"{a!r} and {b!r}" for a, b in duplicates[:5]) + "."
        )
    return keys, not unnamed


def match_class_names(
    dataset_names: Sequence[str], id2label: Mapping[int, str], *, dataset: str = "the evaluation set"
) -> list[int]:
    """The model's class index for each class of an evaluation set, matched by name.

    Args:
        dataset_names: the evaluation set's class names, in its label order (``ClassLabel.names``).
        id2label: the model's ``config.id2label``.
        dataset: the data set's name, for messages.

    Returns:
        ``class_indices`` with ``class_indices[i]`` the model's class of evaluation label ``i``: ``list(range(N))``
        when the evaluation set has exactly the model's classes in the model's order; a permutation when the order
        differs; fewer entries for a subset of the model's classes.

    Raises:
        ValueError: a class the model does not have (listing a few, and a few of the model's names), two evaluation
            classes that are the same model class, or a model without class names (``LABEL_i``) and an evaluation
            set whose names are neither integers nor exactly as many as the model's classes.
    """
    model_keys, named = _model_keys(id2label)
    labels = {int(index): str(name) for index, name in id2label.items()}
    num_labels = len(model_keys)
    if not named and not all(isinstance(class_name_key(n), int) for n in dataset_names):
        if len(dataset_names) == num_labels:
            logger.warning(
                "The model has no class names (config.id2label is LABEL_0..LABEL_%d): the %d classes of %s (%s, ...) "
                "are taken in their label order. Save the model with its class names to have them checked.",
                num_labels - 1, num_labels, dataset, ", ".join(map(repr, dataset_names[:3])),
            )
            return list(range(num_labels))
        raise ValueError(
            f"{dataset} has {len(dataset_names)} classes ({', '.join(map(repr, dataset_names[:5]))}"
            f"{', ...' if len(dataset_names) > 5 else ''}) but the model has {num_labels} classes without names (LABEL_0..LABEL_{num_labels - 1}): they cannot be "
            "matched. Give the model its class names (config.id2label) or the evaluation set integer class names."
        )
    indices, unmatched = [], []
    for name in dataset_names:
        index = model_keys.get(class_name_key(name))
        if index is None:
            unmatched.append(name)
        indices.append(index)
    if unmatched:
        model_names = [labels[i] for i in sorted(labels)][:8]
        raise ValueError(
            f"{len(unmatched)} of the {len(dataset_names)} classes of {dataset} are not classes of the model: "
            f"{', '.join(map(repr, unmatched[:5]))}{', ...' if len(unmatched) > 5 else ''}. The model's "
            f"{num_labels} classes (config.id2label) include {', '.join(map(repr, model_names))}"
            f"{', ...' if num_labels > len(model_names) else ''}. Classes are matched by name (trimmed, "
            "case-insensitive; integers as numbers): rename the class folders or labels to the model's names."
        )
    seen: dict[int, str] = {}
    for name, index in zip(dataset_names, indices):
        if index in seen:
            raise ValueError(f"{dataset}: the classes {seen[index]!r} and {name!r} are both the model's class "
                             f"{index} ({labels[index]!r}).")
        seen[index] = name
    return indices
