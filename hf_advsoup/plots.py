"""Figures of a soup evaluation (:class:`hf_advsoup.soups.SoupEvaluation`), written as PNG files.

- :func:`plot_tradeoff`: clean vs robust accuracy of soups and ensembles, one point per ``beta`` (Figure 4).
- :func:`plot_accuracy_vs_beta`: accuracy against ``beta`` per data set, family and metric (Figure 5, Table 9,
  including the two-network baseline when it was run).
- :func:`plot_landscape`: heatmaps over ``(beta1, beta2)``: clean, robust, and the mean of the min-max normalized
  clean and robust accuracies (Figure 8 a, b, c).
- :func:`plot_pareto`: clean vs robust accuracy of several trained models with their Pareto front (Figure 3: one
  point per co-training weight alpha).
- :func:`plot_training_curves`: a monitored metric against the epoch, one line per run (Figure 6: robust accuracy
  during training, collapses marked).
- :func:`plot_curves_with_intervals` and :func:`plot_tradeoff_with_intervals`: accuracies with their 95% intervals
  (the flagship's card).

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global backend
change, no display needed, safe in threads and tests. Accuracies are shown in percent.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .soups import SoupEvaluation, describe_threat_model

logger = logging.getLogger(__name__)

_STYLE = {
    "soup": dict(color="tab:blue", marker="o", label="soup (x1 compute)"),
    "ensemble": dict(color="tab:orange", marker="s", label="ensemble (x2 compute)"),
    "independent_soup": dict(color="tab:gray", marker="^", label="soup of two independent networks"),
}



def _label_axes(ax, xlabel: str, ylabel: str, title: str, *, legend_size: int) -> None:
    """The finish every plot of this module shares: axis labels, a small title, a light grid, the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(figure: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi)
    logger.info("Wrote %s", path)
    return path


def _threat_text(result: SoupEvaluation, dataset: str, family: str = "soup") -> str:
    threat = next(
        (r.threat_model for r in result.filter(dataset=dataset, family=family, metric="robust_accuracy")), None
    )
    return describe_threat_model(threat) if threat else "no attack"


def plot_tradeoff(result: SoupEvaluation, path: str | Path, dataset: str | None = None, dpi: int = 120,
                  extra_points: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Clean accuracy (x) against robust accuracy (y) of soups and ensembles, each point labelled with its
    ``beta`` (Figure 4 of the paper). ``dataset`` defaults to the first one with robust numbers. ``extra_points``:
    ``{label: (clean, robust)}`` (fractions) of other settings of the same model, drawn as labelled stars."""
    if dataset is None:
        dataset = next((r.dataset for r in result.records if r.metric == "robust_accuracy"), None)
    if dataset is None:
        raise ValueError("The trade-off plot needs robust accuracy: run the sweep with an attack.")
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.add_subplot()
    drawn = 0
    for family in ("soup", "ensemble", "independent_soup"):
        clean = result.curve(dataset, family, "clean_accuracy")
        robust = result.curve(dataset, family, "robust_accuracy")
        betas = sorted(b for b in robust if b in clean)
        if not betas:
            continue
        xs = [100 * clean[b] for b in betas]
        ys = [100 * robust[b] for b in betas]
        ax.plot(xs, ys, linestyle="-", **_STYLE[family])
        if family == "soup":
            for b, x, y in zip(betas, xs, ys):
                ax.annotate(f"{b:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        drawn += 1
    if not drawn:
        raise ValueError(f"No beta of {dataset!r} has both clean and robust accuracy.")
    for label, (clean, robust) in (extra_points or {}).items():
        ax.plot([100 * clean], [100 * robust], marker="*", markersize=12, linestyle="none", color="tab:red",
                label=label)
        ax.annotate(label, (100 * clean, 100 * robust), textcoords="offset points", xytext=(5, -10), fontsize=8)
    _label_axes(ax, "clean accuracy (%)", "robust accuracy (%)",
                f"Soups vs ensembles on {dataset}\n{_threat_text(result, dataset)}", legend_size=8)
    return _save(figure, path, dpi)


def plot_accuracy_vs_beta(result: SoupEvaluation, path: str | Path, dpi: int = 120) -> Path:
    """Accuracy (%) against ``beta``: one panel per metric, one line per data set and family (Figure 5 and
    Table 9; ``beta=1`` is clean mode, ``beta=0`` robust mode)."""
    metrics = [m for m in ("clean_accuracy", "robust_accuracy") if result.filter(metric=m)]
    if not metrics:
        raise ValueError("The evaluation holds no accuracy to plot.")
    figure = Figure(figsize=(5.0 * len(metrics), 4.0), layout="constrained")
    linestyles = ["-", "--", ":", "-."]
    for i, metric in enumerate(metrics):
        ax = figure.add_subplot(1, len(metrics), i + 1)
        for j, dataset in enumerate(result.datasets):
            for family, style in _STYLE.items():
                curve = result.curve(dataset, family, metric)
                if not curve:
                    continue
                betas = sorted(curve)
                label = f"{dataset}: {style['label']}" if len(result.datasets) > 1 else style["label"]
                ax.plot(betas, [100 * curve[b] for b in betas], color=style["color"], marker=style["marker"],
                        linestyle=linestyles[j % len(linestyles)], label=label, markersize=4)
        ax.set_xlabel("beta (1 = clean mode, 0 = robust mode)")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(figure, path, dpi)


def plot_landscape(result: SoupEvaluation, path: str | Path, dataset: str | None = None, dpi: int = 120) -> Path:
    """Heatmaps over ``beta1 * phi_clean + beta2 * phi_adv`` (Figure 8): (a) clean accuracy, (b) robust accuracy,
    (c) mean of the min-max normalized clean and robust accuracies. Rows are ``beta1`` (largest on top), columns
    ``beta2``, so the soups (``beta1 + beta2 = 1``) run from top left to bottom right as in the paper."""
    rows = result.filter(family="landscape")
    if not rows:
        raise ValueError("The evaluation holds no landscape: run it with landscape=True (--landscape).")
    dataset = dataset or rows[0].dataset
    grids = {m: result.grid(dataset, m) for m in ("clean_accuracy", "robust_accuracy")}
    grids = {m: g for m, g in grids.items() if g}
    beta1s = sorted({b1 for g in grids.values() for b1, _ in g}, reverse=True)
    beta2s = sorted({b2 for g in grids.values() for _, b2 in g})

    def matrix(grid):
        return [[grid.get((b1, b2), float("nan")) * 100 for b2 in beta2s] for b1 in beta1s]

    panels = [("(a) clean accuracy (%)", matrix(grids["clean_accuracy"]))] if "clean_accuracy" in grids else []
    if "robust_accuracy" in grids:
        panels.append((f"(b) robust accuracy (%)\n{_threat_text(result, dataset, 'landscape')}",
                       matrix(grids["robust_accuracy"])))
    if len(panels) == 2:
        panels.append(("(c) mean of min-max normalized\nclean and robust accuracy",
                       _normalized_mean(panels[0][1], panels[1][1])))
    figure = Figure(figsize=(4.6 * len(panels), 4.4), layout="constrained")
    for i, (title, values) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        image = ax.imshow(values, cmap="RdBu_r" if i == 2 else "viridis", aspect="auto")
        figure.colorbar(image, ax=ax, shrink=0.85)
        ax.set_xticks(range(len(beta2s)), [f"{b:g}" for b in beta2s], fontsize=7)
        ax.set_yticks(range(len(beta1s)), [f"{b:g}" for b in beta1s], fontsize=7)
        ax.set_xlabel("beta2 (weight of the adversarial token)")
        ax.set_ylabel("beta1 (weight of the clean token)")
        ax.set_title(title, fontsize=9)
    figure.suptitle(f"Linear combinations of the adapters on {dataset}", fontsize=10)
    return _save(figure, path, dpi)


def _normalized_mean(clean: list[list[float]], robust: list[list[float]]) -> list[list[float]]:
    def rescale(values):
        flat = [v for row in values for v in row if v == v]
        low, high = (min(flat), max(flat)) if flat else (0.0, 1.0)
        span = high - low or 1.0
        return [[(v - low) / span for v in row] for row in values]

    c, r = rescale(clean), rescale(robust)
    return [[(a + b) / 2 for a, b in zip(rc, rr)] for rc, rr in zip(c, r)]


def plot_all(result: SoupEvaluation, output_dir: str | Path, dpi: int = 120,
             extra_points: Mapping[str, tuple[float, float]] | None = None) -> dict[str, Path]:
    """Every figure the evaluation supports, in ``output_dir``: ``accuracy_vs_beta.png``, and when robust numbers
    exist ``tradeoff[_<dataset>].png`` (one per attacked data set; ``extra_points`` on the first one, see
    :func:`plot_tradeoff`), and ``landscape[_<dataset>].png``."""
    output_dir = Path(output_dir)
    paths = {"accuracy_vs_beta": plot_accuracy_vs_beta(result, output_dir / "accuracy_vs_beta.png", dpi)}
    attacked = list(dict.fromkeys(r.dataset for r in result.records
                                  if r.metric == "robust_accuracy" and r.family != "landscape"))
    for dataset in attacked:
        suffix = "" if dataset == attacked[0] else f"_{_slug(dataset)}"
        paths[f"tradeoff{suffix}"] = plot_tradeoff(result, output_dir / f"tradeoff{suffix}.png", dataset, dpi,
                                                   extra_points=extra_points if not suffix else None)
    landscapes = list(dict.fromkeys(r.dataset for r in result.filter(family="landscape")))
    for dataset in landscapes:
        suffix = "" if dataset == landscapes[0] else f"_{_slug(dataset)}"
        paths[f"landscape{suffix}"] = plot_landscape(result, output_dir / f"landscape{suffix}.png", dataset, dpi)
    return paths


def plot_pareto(points: Mapping[str, tuple[float, float]], front: Sequence[str], path: str | Path, *, xlabel: str,
                ylabel: str, title: str, dpi: int = 120) -> Path:
    """Clean (x) against robust (y) accuracy of several models, ``{label: (clean, robust)}`` (fractions, drawn in
    percent), each point labelled, the labels in ``front`` joined as the Pareto front (Figure 3)."""
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.add_subplot()
    xs = {label: 100 * c for label, (c, _) in points.items()}
    ys = {label: 100 * r for label, (_, r) in points.items()}
    ax.plot(list(xs.values()), list(ys.values()), "o", color="tab:blue", label="trained models")
    ordered = sorted((label for label in front if label in points), key=lambda label: xs[label])
    ax.plot([xs[label] for label in ordered], [ys[label] for label in ordered], "-", color="tab:red", alpha=0.6,
            label="Pareto front")
    for label in points:
        ax.annotate(label, (xs[label], ys[label]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    _label_axes(ax, xlabel, ylabel, title, legend_size=8)
    return _save(figure, path, dpi)


def plot_training_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *, ylabel: str,
                         title: str, marked: Collection[str] = (), mark_text: str = "collapsed",
                         dpi: int = 120) -> Path:
    """A metric monitored during training, ``{run label: [(epoch, value)]}`` (fractions, drawn in percent), one line
    per run; the labels in ``marked`` get ``[mark_text]`` in the legend (Figure 6: catastrophic overfitting)."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = figure.add_subplot()
    drawn = 0
    for label, series in curves.items():
        if series:
            ax.plot([e for e, _ in series], [100 * v for _, v in series], marker=".",
                    label=label + (f" [{mark_text}]" if label in marked else ""))
            drawn += 1
    if not drawn:
        raise ValueError("No monitored values to plot.")
    _label_axes(ax, "epoch", ylabel, title, legend_size=6)
    return _save(figure, path, dpi)


def plot_curves_with_intervals(curves: Mapping[str, Sequence[tuple[float, float, float, float]]], path: str | Path,
                               *, xlabel: str, ylabel: str, title: str,
                               references: Mapping[str, tuple[float, float, float]] | None = None,
                               dpi: int = 120) -> Path:
    """Accuracies with their 95% intervals: ``{label: [(x, value, low, high)]}`` (fractions, drawn in percent) as
    lines with error bars, and ``references`` ``{label: (value, low, high)}`` (e.g. baselines, which have no x) as
    horizontal lines with a shaded interval."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = figure.add_subplot()
    for label, points in curves.items():
        if not points:
            continue
        xs = [p[0] for p in points]
        ys = [100 * p[1] for p in points]
        errors = [[100 * (p[1] - p[2]) for p in points], [100 * (p[3] - p[1]) for p in points]]
        ax.errorbar(xs, ys, yerr=errors, marker="o", markersize=3, capsize=2, label=label)
    for i, (label, (value, low, high)) in enumerate((references or {}).items()):
        color = f"C{(len(curves) + i) % 10}"
        ax.axhline(100 * value, color=color, linestyle="--", linewidth=1, label=label)
        ax.axhspan(100 * low, 100 * high, color=color, alpha=0.12)
    _label_axes(ax, xlabel, ylabel, title, legend_size=7)
    return _save(figure, path, dpi)


def plot_tradeoff_with_intervals(points: Mapping[str, Sequence[tuple[str, float, float, float, float, float, float]]],
                                 path: str | Path, *, xlabel: str, ylabel: str, title: str, dpi: int = 120) -> Path:
    """Clean (x) against robust (y) accuracy with 95% intervals on both: ``{series: [(annotation, clean, low,
    high, robust, low, high)]}``, a series with several points (the soups) joined by a line."""
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.add_subplot()
    for label, series in points.items():
        xs = [100 * p[1] for p in series]
        ys = [100 * p[4] for p in series]
        xerr = [[100 * (p[1] - p[2]) for p in series], [100 * (p[3] - p[1]) for p in series]]
        yerr = [[100 * (p[4] - p[5]) for p in series], [100 * (p[6] - p[4]) for p in series]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", markersize=3, capsize=2,
                    linestyle="-" if len(series) > 1 else "none", label=label)
        for p, x, y in zip(series, xs, ys):
            if p[0]:
                ax.annotate(p[0], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    _label_axes(ax, xlabel, ylabel, title, legend_size=7)
    return _save(figure, path, dpi)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


__all__ = ["plot_accuracy_vs_beta", "plot_all", "plot_curves_with_intervals", "plot_landscape", "plot_pareto",
           "plot_tradeoff", "plot_tradeoff_with_intervals", "plot_training_curves"]
