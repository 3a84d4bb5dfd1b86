"""The numbers of a soup evaluation: :class:`SoupRecord` (one accuracy and everything that produced it) and
:class:`SoupEvaluation` (all of them, with settings and selections; JSON, CSV and markdown)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("soup", "ensemble", "landscape", "independent_soup")
"""``soup``: one network, adapters interpolated (Eq. 3). ``ensemble``: probabilities of clean and robust modes
averaged (Figure 4, Table 8; 2 forward passes). ``landscape``: ``beta1 * phi_clean + beta2 * phi_adv`` (appendix D).
``independent_soup``: all weights of two independently trained networks interpolated (Table 9 baseline; ``beta=1``
is the nominal network, ``beta=0`` the adversarially trained one)."""

METRICS = ("clean_accuracy", "robust_accuracy")

COMPUTE = {"soup": 1, "ensemble": 2, "landscape": 1, "independent_soup": 1}
"""Forward passes per prediction (Table 3's "COMPUTE" column)."""


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


__all__ = [
    "COMPUTE",
    "FAMILIES",
    "METRICS",
    "SoupEvaluation",
    "SoupRecord",
    "describe_threat_model",
]
