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
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .configuration_advsoup import validate_beta
from .intervals import pack_flags
from .modeling_advsoup import AdvSoupViTForImageClassification

logger = logging.getLogger(__name__)

DEFAULT_BETAS: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(11))
"""The paper's grid (Tables 7, 8, 9; Figures 4, 5): 0, 0.1, ..., 1."""

DEFAULT_LANDSCAPE_BETAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
"""Default axis of the 2-D landscape (appendix D, Figure 8), for both ``beta1`` and ``beta2``: 6 x 6 = 36 models.
It contains the soups ``beta1 + beta2 = 1`` on its anti-diagonal and a little extrapolation on both sides."""

FAMILIES = ("soup", "ensemble", "landscape", "independent_soup")
"""``soup``: one network, adapters interpolated (Eq. 3). ``ensemble``: probabilities of clean and robust modes
averaged (Figure 4, Table 8; 2 forward passes). ``landscape``: ``beta1 * phi_clean + beta2 * phi_adv`` (appendix D).
``independent_soup``: all weights of two independently trained networks interpolated (Table 9 baseline; ``beta=1``
is the nominal network, ``beta=0`` the adversarially trained one)."""

METRICS = ("clean_accuracy", "robust_accuracy")

COMPUTE = {"soup": 1, "ensemble": 2, "landscape": 1, "independent_soup": 1}
"""Forward passes per prediction (Table 3's "COMPUTE" column)."""

EvalData = Any
"""Evaluation data: a ``(pixel_values, labels)`` pair of tensors, or an iterable (e.g. a ``DataLoader``) of batches,
each a mapping with ``"pixel_values"`` and ``"labels"`` (the project's ``collate_fn``) or a ``(pixel_values, labels)``
pair. ``pixel_values`` are normalized by the model's image processor, shape ``(batch, channels, height, width)``."""


# --------------------------------------------------------------------------------------------------- arguments
def _default_betas() -> list[float]:
    return list(DEFAULT_BETAS)


def _default_landscape_betas() -> list[float]:
    return list(DEFAULT_LANDSCAPE_BETAS)


@dataclass
class SoupEvaluationArguments:
    """What to evaluate and how (the library function :func:`evaluate_soups` and ``scripts/evaluate_soups.py``)."""

    betas: list[float] = field(
        default_factory=_default_betas,
        metadata={"help": "Soup weights to evaluate (1 = clean mode, 0 = robust mode). Default: 0, 0.1, ..., 1."},
    )
    extrapolate_betas: list[float] = field(
        default_factory=list,
        metadata={
            "help": "Extra soup weights outside [0, 1] (extrapolation, Section 5.2: the paper reports 1.05 and -0.05)."
            " Soups only: an ensemble is a probability average and needs 0 <= beta <= 1."
        },
    )
    ensembles: bool = field(
        default=True,
        metadata={"help": "Also evaluate ensembles of clean and robust modes at the betas in [0, 1] (Figure 4)."},
    )
    attack: str = field(
        default="report",
        metadata={
            "help": "Attack preset of hf_advsoup.attacks for robust accuracy, or 'none' for clean accuracy only. "
            "Default 'report': the paper's PGD-40 then MultiTargeted towards 9 classes, the attack behind every "
            "reported number (measured within 0.5 points of AutoAttack's APGD-CE + APGD-T, see docs/attacks.md); "
            "'pgd40': the paper's PGD-40 alone (cheaper, weaker); 'autoattack': AutoAttack, needs pyautoattack."
        },
    )
    autoattack_attacks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "With --attack autoattack: run only these AutoAttack attacks (pyautoattack's custom version), "
            "e.g. 'apgd-ce' or 'apgd-ce apgd-t', instead of the standard four (APGD-CE, APGD-T, FAB-T, Square). "
            "Default: empty = the standard version. APGD-CE alone is the cheap closing check of a training run."
        },
    )
    epsilon: str | None = field(
        default=None,
        metadata={
            "help": "Override the preset's perturbation radius, in [0, 1] pixel units, as a number or a fraction "
            "('8/255'). Default: the preset's (l_inf 4/255, the paper's)."
        },
    )
    attack_steps: int | None = field(
        default=None,
        metadata={"help": "Override the preset's number of steps (pgd40 / report: the step-size decay points scale "
                  "with it, e.g. 20 steps decay at 10 and 15; the attack is then named PGD-20)."},
    )
    attack_target_classes: int | None = field(
        default=None,
        metadata={"help": "Override the preset's number of MultiTargeted classes (report: 9, every other class of a "
                  "10-class data set; 0 = PGD-40 alone). Fewer is cheaper and can miss examples: on one measured "
                  "soup 3 left a 0.9-point gap to APGD-CE + APGD-T, 5 and 9 0.1 (docs/attacks.md)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Batch size of clean and robust evaluation."})
    max_eval_examples: int | None = field(
        default=None, metadata={"help": "Clean accuracy on the first N examples of each data set (default: all)."}
    )
    max_robust_examples: int | None = field(
        default=1000,
        metadata={
            "help": "Robust accuracy on the first N examples of each data set (an attack costs steps+1 forward and "
            "backward passes per example and beta). Default 1000; 0 or a negative value means all."
        },
    )
    robust_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the data sets to attack (default: only the first one; 'all' for every one)."},
    )
    landscape: bool = field(
        default=False, metadata={"help": "Evaluate the 2-D landscape beta1*phi_clean + beta2*phi_adv (appendix D)."}
    )
    landscape_betas: list[float] = field(
        default_factory=_default_landscape_betas,
        metadata={"help": "Axis values used for both beta1 and beta2 of the landscape (default 0, 0.25, ..., 1.25)."},
    )
    landscape_robust: bool = field(
        default=True, metadata={"help": "Also attack every landscape cell (Figure 8b). Costly: one attack per cell."}
    )
    landscape_attack: str | None = field(
        default=None,
        metadata={"help": "Attack preset for the landscape (default: --attack). The paper's Figure 8 uses PGD-2."},
    )
    min_clean_accuracy: float | None = field(
        default=None,
        metadata={"help": "Select the most robust soup whose clean accuracy is at least this fraction (e.g. 0.8)."},
    )
    bf16: bool = field(
        default=False, metadata={"help": "bf16 autocast for the forward passes (CUDA only; ignored on CPU)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the attacks' random starts."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self):
        self.betas = [validate_beta(b) for b in self.betas]
        self.extrapolate_betas = [validate_beta(b) for b in self.extrapolate_betas]
        self.landscape_betas = [validate_beta(b) for b in self.landscape_betas]
        if not self.betas and not self.extrapolate_betas:
            raise ValueError("betas is empty: give at least one soup weight (e.g. --betas 0 0.5 1).")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        for name in ("max_eval_examples", "max_robust_examples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                setattr(self, name, None)
        if self.min_clean_accuracy is not None and not 0.0 <= self.min_clean_accuracy <= 1.0:
            raise ValueError(
                f"min_clean_accuracy is a fraction in [0, 1], got {self.min_clean_accuracy} (did you mean "
                f"{self.min_clean_accuracy / 100:g}?)."
            )
        self.autoattack_attacks = [name.lower() for name in self.autoattack_attacks]
        if self.autoattack_attacks and self.attack != "autoattack":
            raise ValueError(f"autoattack_attacks {self.autoattack_attacks} needs attack='autoattack', got attack="
                             f"{self.attack!r}.")
        if self.robust:
            # Unknown presets, epsilon=4 for l_inf, ...: clear errors now rather than after the clean sweep.
            build_attack(self.attack, epsilon=self.epsilon, steps=self.attack_steps,
                         target_classes=self.attack_target_classes,
                         autoattack_attacks=self.autoattack_attacks)

    @property
    def all_betas(self) -> list[float]:
        """Sorted, de-duplicated soup weights: ``betas`` plus ``extrapolate_betas``."""
        return sorted(set(self.betas) | set(self.extrapolate_betas))

    @property
    def ensemble_betas(self) -> list[float]:
        """The soup weights at which ensembles are evaluated (those in ``[0, 1]``), or none."""
        return [b for b in self.all_betas if 0.0 <= b <= 1.0] if self.ensembles else []

    @property
    def robust(self) -> bool:
        return self.attack.lower() != "none"


# --------------------------------------------------------------------------------------------------- records
@dataclass
class SoupRecord:
    """One accuracy with the settings that produced it (one row of the CSV, one metric of the model card).

    ``value`` is a fraction in ``[0, 1]``. ``forward_passes`` counts network forwards over single images that this
    number cost (clean: ``num_examples * compute``; robust: counted during the attack and the final evaluation).
    ``threat_model`` is ``None`` for clean accuracy, else the attack's settings (``norm``, ``epsilon`` in pixel units,
    ``attack``, ``steps``, ...). ``outcomes``: the per-image outcomes behind ``value`` (correct or not, in the order of
    the evaluated images; :func:`hf_advsoup.intervals.pack_flags`), for counts, intervals and paired comparisons.
    """

    dataset: str
    family: str
    beta: float
    metric: str
    value: float
    num_examples: int
    forward_passes: int
    compute: int
    beta2: float | None = None
    threat_model: dict[str, Any] | None = None
    outcomes: str | None = None

    @property
    def key(self) -> tuple:
        return (self.dataset, self.family, self.beta, self.beta2, self.metric)


@dataclass
class SoupEvaluation:
    """All numbers of one soup evaluation plus the settings and selections; serialises to JSON, CSV and markdown."""

    records: list[SoupRecord] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- queries
    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.records))

    def filter(self, **criteria) -> list[SoupRecord]:
        """Records whose attributes equal every given value, e.g. ``filter(family="soup", metric="clean_accuracy")``."""
        return [r for r in self.records if all(getattr(r, k) == v for k, v in criteria.items())]

    def curve(self, dataset: str, family: str, metric: str) -> dict[float, float]:
        """``{beta: accuracy}`` for one data set, family and metric (landscape cells are excluded)."""
        return {
            r.beta: r.value for r in self.filter(dataset=dataset, family=family, metric=metric) if r.beta2 is None
        }

    def grid(self, dataset: str, metric: str) -> dict[tuple[float, float], float]:
        """``{(beta1, beta2): accuracy}`` of the landscape for one data set and metric."""
        return {(r.beta, r.beta2): r.value for r in self.filter(dataset=dataset, family="landscape", metric=metric)}

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "selection": self.selection,
            "results": [dataclasses.asdict(r) for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SoupEvaluation:
        return cls(
            records=[SoupRecord(**r) for r in data.get("results", [])],
            settings=dict(data.get("settings", {})),
            selection=dict(data.get("selection", {})),
        )

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load_json(cls, path: str | Path) -> SoupEvaluation:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_csv(self) -> str:
        """One row per number. Threat-model fields are flattened into ``norm``, ``epsilon``, ``attack``, ``steps``."""
        buffer = io.StringIO()
        columns = ["dataset", "family", "beta", "beta2", "metric", "value", "num_examples", "forward_passes",
                   "compute", "norm", "epsilon", "attack", "steps", "attack_name"]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self.records:
            threat = r.threat_model or {}
            writer.writerow({
                **{k: getattr(r, k) for k in columns[:9]},
                **{k: threat.get(k) for k in ("norm", "epsilon", "attack", "steps")},
                "attack_name": threat.get("name"),
            })
        return buffer.getvalue()

    def to_markdown(self) -> str:
        """Accuracy (%) per beta: one table per data set with soup and ensemble clean / robust columns, then the
        two-network baseline and the selections."""
        lines: list[str] = []
        for dataset in self.datasets:
            columns = [
                (family, metric)
                for family in ("soup", "ensemble", "independent_soup")
                for metric in METRICS
                if self.curve(dataset, family, metric)
            ]
            if not columns:
                continue
            betas = sorted({b for family, metric in columns for b in self.curve(dataset, family, metric)})
            lines += [f"### {dataset}", ""]
            header = ["beta"] + [f"{_FAMILY_TITLES[f]} {_METRIC_TITLES[m]}" for f, m in columns]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for beta in betas:
                cells = [f"{beta:g}"]
                for family, metric in columns:
                    value = self.curve(dataset, family, metric).get(beta)
                    cells.append("" if value is None else f"{100 * value:.2f}")
                lines.append("| " + " | ".join(cells) + " |")
            lines += _describe_attacks(self.filter(dataset=dataset))
            lines.append("")
        if self.selection:
            lines += ["### Selection", ""]
            for name, choice in self.selection.items():
                lines.append(f"- **{name}**: {_describe_choice(choice)}")
            lines.append("")
        return "\n".join(lines)

    def save(self, output_dir: str | Path, stem: str = "soup_results") -> dict[str, Path]:
        """Write ``{stem}.json``, ``{stem}.csv`` and ``{stem}.md`` into ``output_dir``; returns their paths."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": self.save_json(output_dir / f"{stem}.json")}
        paths["csv"] = output_dir / f"{stem}.csv"
        paths["csv"].write_text(self.to_csv(), encoding="utf-8")
        paths["markdown"] = output_dir / f"{stem}.md"
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return paths


_FAMILY_TITLES = {"soup": "soup", "ensemble": "ensemble", "landscape": "landscape",
                  "independent_soup": "two-network soup"}
_METRIC_TITLES = {"clean_accuracy": "clean", "robust_accuracy": "robust"}


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return repr(value)


def describe_threat_model(threat: Mapping[str, Any]) -> str:
    """A one-line human description: the attack's own ``description`` when the threat model has one (made by
    :func:`threat_model_of`; names the attack as run and all its settings), else e.g.
    ``"pgd40, Linf, eps 4/255 (0.01569), 40 steps"``."""
    if threat.get("description"):
        preset = threat.get("attack")
        return f"{threat['description']} (preset `{preset}`)" if preset else str(threat["description"])
    parts = [str(threat.get("attack", "attack"))]
    if threat.get("norm") is not None:
        parts.append(str(threat["norm"]))
    eps = threat.get("epsilon")
    if eps is not None:
        in_255 = eps * 255
        # Only l_inf radii are fractions of 255 (4/255); an l_2 radius of 1 is not "255/255".
        is_linf = str(threat.get("norm", "linf")).lower() == "linf"
        parts.append(f"eps {in_255:g}/255 ({eps:.5f})" if is_linf and abs(in_255 - round(in_255)) < 1e-6
                     else f"eps {eps:g}")
    if threat.get("steps") is not None:
        parts.append(f"{threat['steps']} steps")
    if threat.get("version"):
        attacks = threat.get("attacks")
        parts.append(f"{threat['version']} version" + (f" ({' + '.join(attacks).upper()})" if attacks else ""))
    return ", ".join(parts)


def _describe_attacks(records: Sequence[SoupRecord]) -> list[str]:
    """Markdown lines naming the attack behind every robust number of ``records`` (one line per distinct attack,
    with the families it produced when there are several)."""
    families: dict[str, list[str]] = {}
    for r in records:
        if r.threat_model:
            names = families.setdefault(describe_threat_model(r.threat_model), [])
            if _FAMILY_TITLES[r.family] not in names:
                names.append(_FAMILY_TITLES[r.family])
    if not families:  # no robust number (--attack none): no heading
        return []
    if len(families) == 1:
        return ["", f"Robust accuracy: {next(iter(families))}."]
    return ["", "Robust accuracy:"] + [f"- {', '.join(names)}: {text}." for text, names in families.items()]


def _describe_choice(choice: Mapping[str, Any] | None) -> str:
    if not choice:
        return "none"
    if "message" in choice:
        return str(choice["message"])
    text = f"{choice['family']} beta={choice['beta']:g}"
    for key in ("mean_accuracy", "clean_accuracy", "robust_accuracy"):
        if choice.get(key) is not None:
            text += f", {key.replace('_', ' ')} {100 * choice[key]:.2f}%"
    return text


# --------------------------------------------------------------------------------------------------- data helpers
def iter_batches(data: EvalData, batch_size: int, max_examples: int | None = None) -> Iterator[tuple]:
    """Yield ``(pixel_values, labels)`` batches from :data:`EvalData`, stopping after ``max_examples`` examples."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        pixel_values, labels = data
        if pixel_values.shape[0] != labels.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {labels.shape[0]} labels.")
        batches: Iterable = (
            (pixel_values[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, pixel_values.shape[0], batch_size)
        )
    else:
        batches = data
    seen = 0
    for batch in batches:
        if isinstance(batch, Mapping):
            if "pixel_values" not in batch or "labels" not in batch:
                raise KeyError(f"A batch needs 'pixel_values' and 'labels'; got keys {sorted(batch)}.")
            x, y = batch["pixel_values"], batch["labels"]
        else:
            x, y = batch
        if max_examples is not None:
            if seen >= max_examples:
                return
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        seen += x.shape[0]
        yield x, y


def collect_examples(data: EvalData, max_examples: int | None, batch_size: int = 256) -> tuple:
    """The first ``max_examples`` examples of ``data`` as two CPU tensors ``(pixel_values, labels)``."""
    xs, ys = [], []
    for x, y in iter_batches(data, batch_size, max_examples):
        xs.append(x.cpu())
        ys.append(y.cpu())
    if not xs:
        raise ValueError("The evaluation data set is empty.")
    return torch.cat(xs), torch.cat(ys)


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


class _EvalMode:
    """Put a module in eval mode for a block and restore its previous mode (no hidden mode change)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.modes = {m: m.training for m in self.module.modules()}
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        for m, mode in self.modes.items():
            m.training = mode


class ForwardCounter:
    """Count the images that go through ``module.forward`` (a forward pre-hook), e.g. during an attack.

    An ensemble forward is two calls of the underlying network, so it counts twice. Use as a context manager;
    ``count`` holds the number of single-image forward passes seen.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.count = 0
        self._handle = None

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("pixel_values")
        if isinstance(x, torch.Tensor):
            self.count += x.shape[0]

    def __enter__(self) -> ForwardCounter:
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


@contextlib.contextmanager
def restrict_logits(model: nn.Module, class_indices: Sequence[int] | None) -> Iterator[nn.Module]:
    """Within the block, every forward of ``model`` returns ``logits[..., class_indices]``: the model's scores of an
    evaluation set's classes, in the evaluation set's label order (``class_indices[i]`` is the model's class of
    evaluation label ``i``; :func:`hf_advsoup.data.labels.match_class_names`).

    This is how ImageNet-A and ImageNet-R (200 of ImageNet's 1,000 classes; Hendrycks et al. 2021) are evaluated: a
    prediction is the best of the evaluation set's classes. A forward hook does it, so everything that calls the
    model sees the restricted logits: soups, :meth:`~AdvSoupViTForImageClassification.ensemble_forward` (each mode
    restricted before the probabilities are averaged) and the attacks. ``None`` leaves the model untouched. A
    forward given ``labels`` raises (its loss was computed over all classes). The hook is removed on exit.
    """
    if class_indices is None:
        yield model
        return
    index = torch.as_tensor(list(class_indices), dtype=torch.long)

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output.index_select(-1, index.to(output.device))
        if getattr(output, "loss", None) is not None:
            raise RuntimeError("restrict_logits: the forward computed a loss over all classes; call the model "
                               "without labels.")
        output.logits = output.logits.index_select(-1, index.to(output.logits.device))
        return output

    handle = model.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def _restricted(
    model: nn.Module, datasets: Mapping[str, EvalData], class_indices: Mapping[str, Sequence[int]] | None
) -> Iterator[tuple[str, EvalData]]:
    """``datasets.items()``, with ``model``'s logits restricted to ``class_indices[name]`` (:func:`restrict_logits`)
    while the caller's loop body handles data set ``name``; the hook is removed when the loop moves on or ends (or
    when the generator is closed, after an exception)."""
    for name, data in datasets.items():
        with restrict_logits(model, (class_indices or {}).get(name)):
            yield name, data


# --------------------------------------------------------------------------------------------------- ensembles
def ensemble_probabilities(clean_logits: torch.Tensor, robust_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * softmax(clean_logits) + (1 - beta) * softmax(robust_logits)``: the ensemble of Figure 4 / Table 8.

    The same average as :meth:`AdvSoupViTForImageClassification.ensemble_forward` (whose ``logits`` are the log of
    this), computed from logits that were already there so that a sweep over betas costs two forwards in all.
    """
    beta = validate_beta(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"An ensemble needs 0 <= beta <= 1 (a probability average), got beta={beta}.")
    return beta * clean_logits.float().softmax(-1) + (1.0 - beta) * robust_logits.float().softmax(-1)


class SoupEnsemble(nn.Module):
    """The ensemble of the clean and robust modes of ``model`` at weight ``beta`` as one classifier.

    ``forward(pixel_values)`` returns :meth:`~AdvSoupViTForImageClassification.ensemble_forward`: its ``logits``
    are the log of the averaged probabilities, so an attack on this module attacks the ensemble end to end (the
    gradient flows through both modes). It wraps the model (no copy of any weight).
    """

    def __init__(self, model: AdvSoupViTForImageClassification, beta: float):
        super().__init__()
        self.model = model
        self.beta = validate_beta(beta)
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"An ensemble needs 0 <= beta <= 1, got beta={self.beta}.")
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        return self.model.ensemble_forward(pixel_values, beta=self.beta, labels=labels)


# --------------------------------------------------------------------------------------------------- clean sweeps
@torch.no_grad()
def clean_sweep(
    model: AdvSoupViTForImageClassification,
    data: EvalData,
    betas: Sequence[float],
    *,
    ensemble_betas: Sequence[float] = (),
    landscape: Sequence[tuple[float, float]] = (),
    dataset_name: str = "eval",
    batch_size: int = 64,
    max_examples: int | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> list[SoupRecord]:
    """Clean accuracy of soups, ensembles and landscape cells, reading ``data`` once.

    Each batch goes through one forward per soup ``beta`` and per landscape cell ``(beta1, beta2)``; the ensembles
    reuse the clean-mode (``beta=1``) and robust-mode (``beta=0``) logits, computed once per batch. So the default
    11-point sweep with ensembles costs 11 forwards per image. The model is put in eval mode for the sweep and
    restored; no weight is copied.
    """
    betas = [validate_beta(b) for b in betas]
    ensemble_betas = [validate_beta(b) for b in ensemble_betas]
    for b in ensemble_betas:
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"An ensemble needs 0 <= beta <= 1 (a probability average), got beta={b}.")
    landscape = [(validate_beta(b1), validate_beta(b2)) for b1, b2 in landscape]
    soup_betas = list(dict.fromkeys(betas + ([1.0, 0.0] if ensemble_betas else [])))
    correct_soup: dict[float, list[torch.Tensor]] = {b: [] for b in soup_betas}
    correct_ens: dict[float, list[torch.Tensor]] = {b: [] for b in ensemble_betas}
    correct_land: dict[tuple[float, float], list[torch.Tensor]] = {cell: [] for cell in landscape}
    total = 0
    device = model.device
    with _EvalMode(model):
        batches = tqdm(
            iter_batches(data, batch_size, max_examples), desc=f"clean sweep [{dataset_name}]", disable=not progress,
            unit="batch",
        )
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = {}
            with _autocast(device, bf16):
                for b in soup_betas:
                    logits[b] = model(pixel_values=x, beta=b).logits.float()
                    correct_soup[b].append((logits[b].argmax(-1) == y).cpu())
                for b in ensemble_betas:
                    probs = ensemble_probabilities(logits[1.0], logits[0.0], b)
                    correct_ens[b].append((probs.argmax(-1) == y).cpu())
                for b1, b2 in landscape:
                    pred = model(pixel_values=x, beta=b1, beta2=b2).logits.argmax(-1)
                    correct_land[(b1, b2)].append((pred == y).cpu())
            total += y.shape[0]
    if total == 0:
        raise ValueError(f"The evaluation data set {dataset_name!r} is empty.")

    def record(family: str, beta: float, flags: list[torch.Tensor], compute: int, **extra: Any) -> SoupRecord:
        correct = torch.cat(flags)
        return SoupRecord(dataset_name, family, beta, "clean_accuracy", int(correct.sum()) / total, total,
                          compute * total, compute, outcomes=pack_flags(correct), **extra)

    records = [record("soup", b, correct_soup[b], 1) for b in betas]
    records += [record("ensemble", b, correct_ens[b], 2) for b in ensemble_betas]
    records += [record("landscape", b1, correct_land[(b1, b2)], 1, beta2=b2) for b1, b2 in landscape]
    return records


# --------------------------------------------------------------------------------------------------- robust sweeps
def build_attack(name: str, *, epsilon: float | str | None = None, steps: int | None = None,
                 target_classes: int | None = None, autoattack_attacks: Sequence[str] = ()):
    """The :class:`~hf_advsoup.attacks.AttackConfig` of preset ``name`` (``"report"``, ``"pgd40"``,
    ``"autoattack"``, ``"pgd2"``, ...) with optional ``epsilon`` (pixel units, a number or a fraction such as
    ``"8/255"``), ``steps`` and ``target_classes`` (MultiTargeted classes) overrides. ``autoattack_attacks``
    (``"autoattack"`` only, e.g. ``["apgd-ce"]``) runs just those AutoAttack attacks (pyautoattack's custom version)
    instead of the standard version."""
    from .attacks import AUTOATTACK_ATTACKS, PRESETS, AttackConfig

    if name not in PRESETS:
        raise ValueError(f"Unknown attack {name!r}; valid presets: {', '.join(PRESETS)} (or 'none').")
    if name == "autoattack":
        try:
            import pyautoattack  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "--attack autoattack needs pyautoattack: pip install --no-deps pyautoattack==0.2.0 (or use pgd40)."
            ) from error
    overrides: dict[str, Any] = {}
    if autoattack_attacks:
        if name != "autoattack":
            raise ValueError(f"autoattack_attacks {list(autoattack_attacks)} needs the 'autoattack' attack, got "
                             f"{name!r}.")
        unknown = [a for a in autoattack_attacks if a not in AUTOATTACK_ATTACKS]
        if unknown:
            raise ValueError(f"Unknown AutoAttack attacks {unknown}; valid: {', '.join(AUTOATTACK_ATTACKS)}.")
        overrides.update(autoattack_version="custom", autoattack_attacks=list(autoattack_attacks))
    if epsilon is not None:
        overrides["epsilon"] = epsilon
    if steps is not None:
        overrides["steps"] = steps
    if target_classes is not None:
        overrides["target_classes"] = target_classes
    return AttackConfig.from_preset(name, **overrides)


def threat_model_of(config, preset: str | None = None) -> dict[str, Any]:
    """JSON-ready threat model of an attack config: ``attack`` (the preset name when given), ``name`` (the attack as
    run, e.g. ``"PGD-20 (Adam) + MT-9"``: the step count is the one that ran), ``description`` (every setting, one
    sentence, for cards), ``norm``, ``epsilon`` (pixel units), ``steps``, ``restarts``, ``step_size``,
    ``lr_decay_steps`` (the Adam decay points actually used), ``target_classes`` and the full config."""
    gradient = config.name != "autoattack"  # AutoAttack runs its own schedules: no single step count
    return {
        "attack": preset or config.name,
        "name": config.short_name,
        "description": config.description,
        "norm": config.norm,
        "epsilon": float(config.epsilon),
        "steps": int(config.steps) if gradient else None,
        "version": config.autoattack_version if not gradient else None,
        "attacks": list(config.autoattack_attacks) if not gradient and config.autoattack_attacks else None,
        "restarts": int(config.restarts),
        "step_size": float(config.effective_step_size) if gradient else None,
        "lr_decay_steps": config.effective_lr_decay_steps if config.name == "pgd40" else None,
        "target_classes": int(config.target_classes),
        "loss": config.loss,
        "config": config.to_dict(),
    }


def robust_accuracy(
    module: nn.Module,
    data: EvalData,
    attack_config,
    *,
    normalization,
    forward_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = False,
) -> tuple[float, int, int, str]:
    """Robust accuracy of ``module(x, **forward_kwargs)`` against one attack, with the project's evaluation
    (:func:`hf_advsoup.evaluation.evaluate_robustness`: misclassified clean examples count as non-robust).

    Returns ``(accuracy, num_examples, forward_passes, outcomes)``, where ``forward_passes`` counts every
    single-image forward of the network (clean pass, attack iterations, final evaluation; an ensemble counts two per
    call) and ``outcomes`` packs the per-image results (:func:`hf_advsoup.intervals.pack_flags`).
    """
    from .evaluation import evaluate_robustness

    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        inputs, labels = data
    else:
        inputs, labels = data, None
    network = module.model if isinstance(module, SoupEnsemble) else module
    device = network.device
    with ForwardCounter(network) as counter, _autocast(device, bf16):
        result = evaluate_robustness(
            module, inputs, labels, [attack_config], normalization=normalization,
            forward_kwargs=forward_kwargs, batch_size=batch_size, seed=seed, max_examples=max_examples,
            show_progress=progress,
        )
    return result.robust_accuracy, result.num_examples, counter.count, pack_flags(result.worst_case_correct)


def robust_sweep(
    model: AdvSoupViTForImageClassification,
    data: EvalData,
    betas: Sequence[float],
    attack_config,
    *,
    normalization,
    family: str = "soup",
    landscape: Sequence[tuple[float, float]] = (),
    dataset_name: str = "eval",
    attack_name: str | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = True,
) -> list[SoupRecord]:
    """Robust accuracy at each ``beta`` (``family="soup"``: attack the soup; ``"ensemble"``: attack the ensemble
    end to end through :class:`SoupEnsemble`) and at each landscape cell ``(beta1, beta2)``.

    Each setting is attacked with the same seed, so the random starts are the same across betas. When
    ``max_examples`` is set, those examples are gathered once (CPU tensors) and reused for every setting.
    """
    if family not in ("soup", "ensemble"):
        raise ValueError(f"family must be 'soup' or 'ensemble' here, got {family!r}.")
    if max_examples is not None:
        data = collect_examples(data, max_examples, batch_size)
    threat = threat_model_of(attack_config, attack_name)
    settings: list[tuple[str, float, float | None]] = [(family, validate_beta(b), None) for b in betas]
    settings += [("landscape", validate_beta(b1), validate_beta(b2)) for b1, b2 in landscape]
    records = []
    bar = tqdm(settings, desc=f"{threat['attack']} [{dataset_name}]", disable=not progress, unit="model")
    for kind, beta, beta2 in bar:
        bar.set_postfix(family=kind, beta=beta, **({"beta2": beta2} if beta2 is not None else {}))
        if kind == "ensemble":
            module, kwargs = SoupEnsemble(model, beta), {}
        else:
            module, kwargs = model, {"beta": beta, **({"beta2": beta2} if beta2 is not None else {})}
        accuracy, n, passes, outcomes = robust_accuracy(
            module, data, attack_config, normalization=normalization, forward_kwargs=kwargs, batch_size=batch_size,
            seed=seed, bf16=bf16,
        )
        records.append(SoupRecord(dataset_name, kind, beta, "robust_accuracy", accuracy, n, passes, COMPUTE[kind],
                                  beta2=beta2, threat_model=threat, outcomes=outcomes))
    return records


# --------------------------------------------------------------------------------------------------- Table 9 baseline
def floating_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of the floating-point tensors of ``model.state_dict()`` (the endpoints of a weight soup)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def interpolate_weights_(
    model: nn.Module, nominal: Mapping[str, torch.Tensor], adversarial: Mapping[str, torch.Tensor], beta: float
) -> nn.Module:
    """Set every floating-point tensor of ``model`` to ``beta * nominal + (1 - beta) * adversarial``, in place.

    The soup of two independently trained networks (Table 9, all weights interpolated): ``beta=1`` is exactly the
    nominal network, ``beta=0`` exactly the adversarial one. No copy of the model is made: each tensor is written
    in place from the two endpoint state dicts (which must have the same keys and shapes as ``model``).
    """
    beta = validate_beta(beta)
    state = model.state_dict()
    missing = sorted((set(nominal) ^ set(adversarial)) | (set(nominal) - set(state)))
    if missing:
        raise ValueError(f"The two networks do not have the same architecture: {len(missing)} tensors differ, e.g. "
                         f"{missing[:3]}.")
    for name, target in state.items():
        if not target.is_floating_point():
            continue
        if name not in nominal:
            raise ValueError(f"Tensor {name!r} of the model is missing from the endpoint state dicts.")
        a, b = nominal[name], adversarial[name]
        if a.shape != target.shape or b.shape != target.shape:
            raise ValueError(f"Shape mismatch for {name!r}: model {tuple(target.shape)}, nominal {tuple(a.shape)}, "
                             f"adversarial {tuple(b.shape)}: the two networks must share one architecture.")
        if beta == 1.0:
            target.copy_(a)
        elif beta == 0.0:
            target.copy_(b)
        else:
            target.copy_(a).mul_(beta).add_(b.to(device=target.device, dtype=target.dtype), alpha=1.0 - beta)
    return model


def independent_soup_sweep(
    nominal_model: nn.Module,
    adversarial_model: nn.Module,
    datasets: Mapping[str, EvalData],
    betas: Sequence[float],
    *,
    attack_config=None,
    attack_name: str | None = None,
    normalization=None,
    robust_datasets: Sequence[str] = (),
    batch_size: int = 64,
    max_eval_examples: int | None = None,
    max_robust_examples: int | None = None,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = True,
    class_indices: Mapping[str, Sequence[int]] | None = None,
) -> list[SoupRecord]:
    """The baseline of Table 9: soups ``beta * nominal + (1 - beta) * adversarial`` of *all* weights of two
    independently trained networks of the same architecture (e.g. two ``ViTForImageClassification``).

    ``nominal_model`` is used as the one working model: its weights are overwritten at each ``beta`` (keep your own
    copy if you need it afterwards; at the end it holds the nominal weights again). Memory: the working model plus
    the two endpoint state dicts; ``adversarial_model`` is only read. Models are called without ``beta``.
    ``class_indices``: as for :func:`evaluate_soups`.
    """
    nominal = floating_state_dict(nominal_model)
    adversarial = {k: v.detach() for k, v in adversarial_model.state_dict().items() if v.is_floating_point()}
    model = nominal_model
    records: list[SoupRecord] = []
    try:
        for beta in tqdm([validate_beta(b) for b in betas], desc="two-network soups", disable=not progress,
                         unit="beta"):
            interpolate_weights_(model, nominal, adversarial, beta)
            for name, data in _restricted(model, datasets, class_indices):
                flags = []
                with _EvalMode(model), torch.no_grad():
                    for x, y in iter_batches(data, batch_size, max_eval_examples):
                        x, y = x.to(model.device), y.to(model.device)
                        with _autocast(model.device, bf16):
                            flags.append((model(pixel_values=x).logits.argmax(-1) == y).cpu())
                correct = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
                total = int(correct.numel())
                records.append(SoupRecord(name, "independent_soup", beta, "clean_accuracy",
                                          int(correct.sum()) / max(total, 1), total, total, 1,
                                          outcomes=pack_flags(correct)))
                if attack_config is not None and name in robust_datasets:
                    accuracy, n, passes, outcomes = robust_accuracy(
                        model, data, attack_config, normalization=normalization, batch_size=batch_size,
                        max_examples=max_robust_examples, seed=seed, bf16=bf16,
                    )
                    records.append(SoupRecord(name, "independent_soup", beta, "robust_accuracy", accuracy, n, passes,
                                              1, threat_model=threat_model_of(attack_config, attack_name),
                                              outcomes=outcomes))
    finally:
        interpolate_weights_(model, nominal, adversarial, 1.0)
    return records


# --------------------------------------------------------------------------------------------------- selection
def best_soup_by_mean_accuracy(
    records: Sequence[SoupRecord] | SoupEvaluation,
    *,
    family: str = "soup",
    metric: str = "clean_accuracy",
    datasets: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """The ``beta`` with the best mean ``metric`` over ``datasets`` (default: every data set that has all betas);
    Table 3 / Table 4 (``beta=0.9`` on the ImageNet variants in the paper). Ties go to the larger ``beta``.

    Returns ``{"family", "beta", "metric", "mean_accuracy", "per_dataset": {name: accuracy}}`` or ``None`` when
    there is nothing to choose from.
    """
    records = records.records if isinstance(records, SoupEvaluation) else records
    rows = [r for r in records if r.family == family and r.metric == metric and r.beta2 is None]
    names = list(datasets) if datasets is not None else list(dict.fromkeys(r.dataset for r in rows))
    table: dict[float, dict[str, float]] = {}
    for r in rows:
        if r.dataset in names:
            table.setdefault(r.beta, {})[r.dataset] = r.value
    complete = {b: v for b, v in table.items() if all(n in v for n in names)}
    if not complete:
        return None
    best = max(complete, key=lambda b: (sum(complete[b].values()) / len(names), b))
    return {
        "family": family,
        "beta": best,
        "metric": metric,
        "mean_accuracy": sum(complete[best].values()) / len(names),
        "per_dataset": {n: complete[best][n] for n in names},
    }


def most_robust_soup(
    records: Sequence[SoupRecord] | SoupEvaluation,
    min_clean_accuracy: float,
    *,
    dataset: str | None = None,
    family: str = "soup",
) -> dict[str, Any]:
    """The most robust ``beta`` whose clean accuracy is at least ``min_clean_accuracy`` (a fraction) on ``dataset``
    (default: the first data set with robust numbers). Ties go to the higher clean accuracy.

    Returns ``{"family", "beta", "dataset", "clean_accuracy", "robust_accuracy", "min_clean_accuracy"}``, or, when
    no soup qualifies, ``{"message": ..., "min_clean_accuracy", "best_clean_accuracy"}`` saying so.
    """
    records = records.records if isinstance(records, SoupEvaluation) else records
    rows = [r for r in records if r.family == family and r.beta2 is None]
    if dataset is None:
        dataset = next((r.dataset for r in rows if r.metric == "robust_accuracy"), None)
    if dataset is None:
        raise ValueError("No robust accuracy to select from: run the sweep with an attack (not --attack none).")
    clean = {r.beta: r.value for r in rows if r.dataset == dataset and r.metric == "clean_accuracy"}
    robust = {r.beta: r.value for r in rows if r.dataset == dataset and r.metric == "robust_accuracy"}
    candidates = [b for b in robust if b in clean and clean[b] >= min_clean_accuracy]
    if not candidates:
        best_clean = max(clean.values()) if clean else float("nan")
        return {
            "message": f"no {family} on {dataset} reaches {100 * min_clean_accuracy:.2f}% clean accuracy (best: "
            f"{100 * best_clean:.2f}%)",
            "min_clean_accuracy": min_clean_accuracy,
            "best_clean_accuracy": best_clean,
            "dataset": dataset,
        }
    best = max(candidates, key=lambda b: (robust[b], clean[b]))
    return {
        "family": family,
        "beta": best,
        "dataset": dataset,
        "clean_accuracy": clean[best],
        "robust_accuracy": robust[best],
        "min_clean_accuracy": min_clean_accuracy,
    }


# --------------------------------------------------------------------------------------------------- driver
def evaluate_soups(
    model: AdvSoupViTForImageClassification,
    datasets: Mapping[str, EvalData],
    args: SoupEvaluationArguments | None = None,
    *,
    normalization=None,
    independent_models: tuple[nn.Module, nn.Module] | None = None,
    class_indices: Mapping[str, Sequence[int]] | None = None,
) -> SoupEvaluation:
    """Clean and robust accuracy of soups and ensembles over a beta grid on one or more data sets, plus optionally
    the 2-D landscape (appendix D) and the two-network baseline (Table 9), and the selections of Table 3 and
    "the most robust soup with clean accuracy >= X".

    Args:
        model: a co-trained dual-adapter model (its weights are never modified or copied).
        datasets: ``{name: data}``, each :data:`EvalData`; the first one is attacked unless
            ``args.robust_datasets`` says otherwise.
        args: what to evaluate (:class:`SoupEvaluationArguments`; default: its defaults).
        normalization: :class:`hf_advsoup.attacks.Normalization` of the image processor; required for robust
            accuracy (attacks work in [0, 1] pixel space).
        independent_models: ``(nominal, adversarial)`` networks for the Table 9 baseline; ``nominal`` is used as
            the working model and overwritten during the sweep (restored at the end).
        class_indices: ``{name: model class of each label}`` for data sets whose labels are not the model's class
            indices (another order, or a subset such as ImageNet-R's 200 classes;
            :func:`hf_advsoup.data.labels.match_class_names`): their logits are restricted to those classes, in
            that order, for clean and robust accuracy alike (:func:`restrict_logits`). Default: none.

    Returns:
        A :class:`SoupEvaluation` whose ``settings`` record the arguments and threat models.
    """
    args = args or SoupEvaluationArguments()
    if not isinstance(model, AdvSoupViTForImageClassification):
        raise TypeError(
            f"evaluate_soups needs an AdvSoupViTForImageClassification (a co-trained dual-adapter model), got "
            f"{type(model).__name__}. For two independent networks use independent_soup_sweep."
        )
    if not datasets:
        raise ValueError("datasets is empty: pass at least one {name: data}.")
    class_indices = {name: list(map(int, indices)) for name, indices in (class_indices or {}).items()}
    unknown = [name for name in class_indices if name not in datasets]
    if unknown:
        raise ValueError(f"class_indices names {unknown}, which are not among the data sets: {', '.join(datasets)}.")
    for name, indices in class_indices.items():
        if not indices or min(indices) < 0 or max(indices) >= model.config.num_labels:
            raise ValueError(f"class_indices[{name!r}] must hold model classes in [0, {model.config.num_labels}), "
                             f"got {indices[:10]}.")
    if model.config.adapter == "none":
        logger.warning("The model has adapter='none' (a single copy): every beta gives the same network.")
    names = list(datasets)
    robust_names: list[str] = []
    attack_config = landscape_config = None
    if args.robust:
        if normalization is None:
            raise ValueError("Robust accuracy needs normalization=Normalization.from_processor(processor) "
                             "(or args.attack='none' for clean accuracy only).")
        if args.robust_datasets is None:
            robust_names = names[:1]
        elif [n.lower() for n in args.robust_datasets] == ["all"]:
            robust_names = names
        else:
            unknown = [n for n in args.robust_datasets if n not in datasets]
            if unknown:
                raise ValueError(f"robust_datasets {unknown} are not among the data sets: {', '.join(names)}.")
            robust_names = list(args.robust_datasets)
        attack_config = build_attack(args.attack, epsilon=args.epsilon, steps=args.attack_steps,
                                     target_classes=args.attack_target_classes,
                                     autoattack_attacks=args.autoattack_attacks)
        landscape_name = args.landscape_attack or args.attack
        if args.landscape and args.landscape_robust:
            same = args.landscape_attack is None
            landscape_config = build_attack(landscape_name, epsilon=args.epsilon,
                                            steps=args.attack_steps if same else None,
                                            target_classes=args.attack_target_classes if same else None,
                                            autoattack_attacks=args.autoattack_attacks if same else ())
    grid = [(b1, b2) for b1 in args.landscape_betas for b2 in args.landscape_betas] if args.landscape else []
    common = dict(batch_size=args.batch_size, bf16=args.bf16, progress=args.progress)

    records: list[SoupRecord] = []
    for name, data in _restricted(model, datasets, class_indices):
        records += clean_sweep(model, data, args.all_betas, ensemble_betas=args.ensemble_betas, landscape=grid,
                               dataset_name=name, max_examples=args.max_eval_examples, **common)
        if name not in robust_names:
            continue
        robust_data = data
        if args.max_robust_examples is not None:
            robust_data = collect_examples(data, args.max_robust_examples, args.batch_size)
        robust_common = dict(normalization=normalization, dataset_name=name, max_examples=None, seed=args.seed,
                             **common)
        records += robust_sweep(model, robust_data, args.all_betas, attack_config, attack_name=args.attack,
                                **robust_common)
        if args.ensemble_betas:
            records += _ensemble_endpoints(records, name, args.ensemble_betas)
            inner = [b for b in args.ensemble_betas if b not in (0.0, 1.0)]
            records += robust_sweep(model, robust_data, inner, attack_config, family="ensemble",
                                    attack_name=args.attack, **robust_common)
        if landscape_config is not None:
            records += robust_sweep(model, robust_data, [], landscape_config, landscape=grid,
                                    attack_name=args.landscape_attack or args.attack, **robust_common)

    if independent_models is not None:
        records += independent_soup_sweep(
            *independent_models, datasets, args.all_betas, attack_config=attack_config, attack_name=args.attack,
            normalization=normalization, robust_datasets=robust_names, batch_size=args.batch_size,
            max_eval_examples=args.max_eval_examples, max_robust_examples=args.max_robust_examples, seed=args.seed,
            bf16=args.bf16, progress=args.progress, class_indices=class_indices,
        )

    result = SoupEvaluation(records=records)
    result.settings = {
        "arguments": dataclasses.asdict(args),
        "datasets": names,
        "robust_datasets": robust_names,
        "threat_model": threat_model_of(attack_config, args.attack) if attack_config is not None else None,
        "landscape_threat_model": (
            threat_model_of(landscape_config, args.landscape_attack or args.attack) if landscape_config else None
        ),
        "normalization": dataclasses.asdict(normalization) if dataclasses.is_dataclass(normalization) else None,
        "model": {"adapter": model.config.adapter, "pooling": model.config.pooling,
                  "name_or_path": getattr(model.config, "_name_or_path", None)},
        "device": str(model.device),
        "class_indices": class_indices or None,
    }
    result.selection = select_soups(result, min_clean_accuracy=args.min_clean_accuracy)
    return result


def _ensemble_endpoints(records: Sequence[SoupRecord], dataset: str, ensemble_betas: Sequence[float]):
    """Robust accuracy of the ensembles at beta = 0 and 1 from the soups' (no second attack).

    At an endpoint the ensemble's output is ``log_softmax`` of one mode's logits: a per-example shift of the logits,
    which leaves the margin, cross-entropy and DLR losses (and so the attack and the prediction) unchanged. The
    forward passes are doubled: that is what the ensemble, which still runs both modes, would have cost.
    """
    out = []
    for r in records:
        if (r.dataset == dataset and r.family == "soup" and r.metric == "robust_accuracy" and r.beta2 is None
                and r.beta in (0.0, 1.0) and r.beta in ensemble_betas):
            out.append(dataclasses.replace(r, family="ensemble", forward_passes=2 * r.forward_passes,
                                           compute=COMPUTE["ensemble"]))
    return out


def select_soups(result: SoupEvaluation, *, min_clean_accuracy: float | None = None) -> dict[str, Any]:
    """The selections reported with a sweep: best soup and best ensemble by mean clean accuracy over the data sets
    (Table 3), and, when robust numbers exist, the best soup by mean of clean and robust accuracy and the most
    robust soup with clean accuracy ``>= min_clean_accuracy``."""
    selection: dict[str, Any] = {}
    for family in ("soup", "ensemble"):
        choice = best_soup_by_mean_accuracy(result, family=family)
        if choice is not None:
            selection[f"best_{family}_by_mean_clean_accuracy"] = choice
    robust_rows = result.filter(family="soup", metric="robust_accuracy")
    if robust_rows:
        dataset = robust_rows[0].dataset
        clean = result.curve(dataset, "soup", "clean_accuracy")
        robust = result.curve(dataset, "soup", "robust_accuracy")
        both = {b: (clean[b] + robust[b]) / 2 for b in robust if b in clean}
        if both:
            best = max(both, key=lambda b: (both[b], b))
            selection["best_soup_by_mean_of_clean_and_robust"] = {
                "family": "soup", "beta": best, "dataset": dataset, "mean_accuracy": both[best],
                "clean_accuracy": clean[best], "robust_accuracy": robust[best],
            }
        if min_clean_accuracy is not None:
            selection["most_robust_soup_with_min_clean_accuracy"] = most_robust_soup(
                result, min_clean_accuracy, dataset=dataset
            )
    return selection


__all__ = [
    "COMPUTE",
    "DEFAULT_BETAS",
    "DEFAULT_LANDSCAPE_BETAS",
    "FAMILIES",
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
