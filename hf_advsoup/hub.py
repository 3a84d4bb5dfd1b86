"""Model cards and Hub uploads for co-trained soup models.

- :func:`build_eval_results`: one :class:`huggingface_hub.EvalResult` per (data set, family, beta, metric) of a
  :class:`~hf_advsoup.soups.SoupEvaluation`, with the threat model (norm, epsilon, attack, steps) in the metric
  config and arguments.
- :func:`render_model_card`: the card template shipped in the package (``templates/model_card.md``), rendered with
  the Hub client's :meth:`huggingface_hub.ModelCard.from_template`: metadata, model-index, a RobustBench-style
  summary, how to load a soup with ``from_pretrained(..., beta=...)``, the trade-off plot, the paper's reference
  numbers (labelled as the paper's) and the run's training arguments.
- :func:`stage_for_hub` saves model, image processor, card, plots and results into one folder;
  :func:`push_folder` uploads that folder in one commit with :meth:`huggingface_hub.HfApi.upload_folder`.
  (``model.push_to_hub`` / ``Trainer.push_to_hub`` would overwrite README.md with their own card.)

Offline (``HF_HUB_OFFLINE=1``) or without a token, :func:`check_can_push` fails before anything is created or sent;
without a network or with a rejected token, :func:`connect` fails before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .attacks import format_epsilon
from .soups import SoupEvaluation, SoupRecord, describe_threat_model

logger = logging.getLogger(__name__)

PAPER_TITLE = "Revisiting adapters with adversarial training"
PAPER_URL = "https://arxiv.org/abs/2210.04886"
CITATION = """@inproceedings{rebuffi2023revisiting,
  title     = {Revisiting adapters with adversarial training},
  author    = {Rebuffi, Sylvestre-Alvise and Croce, Francesco and Gowal, Sven},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023},
  url       = {https://arxiv.org/abs/2210.04886}
}"""

DEFAULT_TAGS = ("adversarial-robustness", "model-soups", "adversarial-training", "vision-transformer",
                "image-classification", "hf_advsoup")
CARD_FAMILIES = ("soup", "ensemble")
"""Families reported in the model-index (the two-network baseline and the landscape describe other models and stay
in the results files and plots)."""


class HubPushError(RuntimeError):
    """Pushing is impossible (offline mode, no token, invalid token); raised before anything is created or sent."""


# --------------------------------------------------------------------------------------------------- paper numbers
@dataclass(frozen=True)
class PaperReference:
    """Reference numbers *from the paper* for one recipe configuration, rendered in a clearly labelled section.

    ``table`` is markdown; ``source`` names the tables of the paper the numbers come from.
    """

    title: str
    source: str
    table: str
    note: str = ""


def _table9() -> str:
    clean = [78.25, 78.63, 79.14, 79.74, 80.50, 81.49, 82.38, 83.05, 83.54, 83.69, 83.76]
    robust = [52.19, 51.73, 50.79, 48.88, 44.91, 33.01, 11.65, 2.16, 0.34, 0.06, 0.02]
    ensemble = [78.25, 79.97, 81.26, 82.15, 82.81, 83.24, 83.47, 83.62, 83.68, 83.73, 83.76]
    rows = ["| beta | soup clean (%) | soup robust, PGD-40 (%) | ensemble clean (%) |", "|---|---|---|---|"]
    rows += [f"| {i / 10:g} | {c:.2f} | {r:.2f} | {e:.2f} |" for i, (c, r, e) in enumerate(zip(clean, robust, ensemble))]
    return "\n".join(rows)


PAPER_REFERENCES: dict[str, PaperReference] = {
    "imagenet-vit-b16": PaperReference(
        title="ImageNet, ViT-B/16, classification-token adapters, alpha = 0.4, l_inf eps = 4/255",
        source="Tables 3, 8, 9 and 10 of Rebuffi et al. (ICLR 2023)",
        table=_table9()
        + "\n\n| model | clean (%) | PGD-40 (%) | AA+MT (%) |\n|---|---|---|---|\n"
        "| nominal training | 82.64 | - | - |\n"
        "| adversarial training | 76.88 | 56.19 | 54.15 |\n"
        "| co-training, clean mode (beta = 1) | 83.76 | - | - |\n"
        "| co-training, robust mode (beta = 0) | 78.25 | 52.19 | 49.55 |\n\n"
        "Best soup on the 8 ImageNet variants (Table 3): beta = 0.9, mean accuracy 61.23% (fine-tuned MAE-B16: "
        "57.23%); best ensemble: beta = 0.7, 62.18% (twice the compute). Extrapolation (Section 5.2): beta = 1.05 "
        "gives 83.81% clean, beta = -0.05 gives 52.26% robust.",
        note="ImageNet validation set (50,000 images); robust accuracy in the paper is against PGD-40 (Adam, step "
        "0.1 decayed 10x at steps 20 and 30) and AutoAttack + MultiTargeted.",
    ),
    "small-vit-s": PaperReference(
        title="Small data sets, ViT-S trained from scratch (patch 4, stride 2 on 32x32 images), classification-token "
        "adapters",
        source="Table 5 of Rebuffi et al. (ICLR 2023): clean accuracy in clean mode",
        table="| training radius | MNIST | CIFAR-10 | CIFAR-100 | SVHN | SUN-397 | RESISC-45 | DMLAB |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| nominal | 99.48 | 94.63 | 79.21 | 97.88 | 65.24 | 94.03 | 55.66 |\n"
        "| 1/255 | 99.56 | 96.68 | 80.88 | 98.38 | 67.08 | 95.09 | 58.94 |\n"
        "| 2/255 | 99.67 | 97.07 | 81.02 | 98.14 | 67.27 | 95.20 | 57.99 |\n"
        "| 4/255 | 99.68 | 97.00 | 80.97 | 97.83 | 67.32 | 94.86 | 57.81 |\n"
        "| 8/255 | 99.71 | 96.34 | 81.27 | 96.18 | 65.97 | 94.12 | 53.64 |",
        note="The paper reports no robust accuracy or soup sweep for these data sets.",
    ),
    "fashion-mnist-tiny": PaperReference(
        title="Fashion-MNIST, tiny ViT (the project's main job)",
        source="none",
        table="",
        note="The paper has no experiment on Fashion-MNIST or at this model size: there are no reference numbers to "
        "compare with. Every number on this card is ours.",
    ),
    "digits-tiny": PaperReference(
        title="scikit-learn digits, tiny ViT (the project's offline demo)",
        source="none",
        table="",
        note="The paper has no experiment on this data set or model size: there are no reference numbers to "
        "compare with. Every number on this card is ours.",
    ),
}
"""Reference numbers of the paper per shipped recipe configuration (keys used by ``--paper_reference``)."""


# --------------------------------------------------------------------------------------------------- card data
@dataclass
class DatasetInfo:
    """How a data set of the evaluation is named on the Hub (``hub_id``; for the model-index ``dataset.type``) and
    which ``split`` was evaluated."""

    name: str
    hub_id: str | None = None
    split: str | None = None
    config: str | None = None


def _metric_config(record: SoupRecord) -> str:
    beta = f"beta={record.beta:g}" + (f",beta2={record.beta2:g}" if record.beta2 is not None else "")
    if record.threat_model is None:
        return f"{record.family},{beta},clean"
    t = record.threat_model
    steps = f",steps={t['steps']}" if t.get("steps") is not None else ""
    return f"{record.family},{beta},{t.get('attack')}{steps},{t.get('norm')},eps={t.get('epsilon'):.6g}"


def build_eval_results(
    result: SoupEvaluation,
    datasets: Mapping[str, DatasetInfo] | None = None,
    families: Sequence[str] = CARD_FAMILIES,
) -> list[EvalResult]:
    """One ``EvalResult`` per (data set, family, beta, metric), accuracies as fractions in ``[0, 1]``.

    ``metric_config`` is a compact string (``"soup,beta=0.5,pgd40,linf,eps=0.0156863"``) and ``metric_args`` the
    structured settings: ``family``, ``beta``, ``mode`` (clean / robust), ``norm``, ``epsilon`` (pixel units),
    ``attack``, ``steps``, ``num_examples``, ``forward_passes``.
    """
    datasets = datasets or {}
    results = []
    for record in result.records:
        if record.family not in families:
            continue
        info = datasets.get(record.dataset) or DatasetInfo(record.dataset)
        mode = "clean" if record.metric == "clean_accuracy" else "robust"
        args: dict[str, Any] = {"family": record.family, "beta": record.beta, "mode": mode,
                                "num_examples": record.num_examples, "forward_passes": record.forward_passes,
                                "compute": record.compute}
        if record.beta2 is not None:
            args["beta2"] = record.beta2
        name = f"{record.family} beta={record.beta:g} {mode} accuracy"
        if record.threat_model is not None:
            t = record.threat_model
            args.update(norm=t.get("norm"), epsilon=t.get("epsilon"), attack=t.get("attack"), steps=t.get("steps"),
                        attack_name=t.get("name") or t.get("attack"))
            # The metric name stays short (the Hub shows it in a widget); the card text gives every setting.
            name += (f" ({t['name']}, {t.get('norm')}, eps {format_epsilon(t['epsilon'], t.get('norm', 'linf'))})"
                     if t.get("name") and t.get("epsilon") is not None else f" ({describe_threat_model(t)})")
        results.append(EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=info.hub_id or info.name,
            dataset_name=info.name,
            dataset_config=info.config,
            dataset_split=info.split,
            metric_type="accuracy",
            metric_value=round(float(record.value), 6),
            metric_name=name,
            metric_config=_metric_config(record),
            metric_args=args,
        ))
    return results


def robustbench_summary(result: SoupEvaluation, dataset: str | None = None) -> str:
    """A RobustBench-style markdown table (threat model, eps, clean and robust accuracy, forward passes per image)
    for robust mode, clean mode and the selected soups, on the first attacked data set."""
    robust_rows = [r for r in result.records if r.metric == "robust_accuracy" and r.family in CARD_FAMILIES]
    if dataset is None and robust_rows:
        dataset = robust_rows[0].dataset
    if dataset is None:
        return ""
    clean = result.curve(dataset, "soup", "clean_accuracy")
    robust = {r.beta: r for r in robust_rows if r.dataset == dataset and r.family == "soup"}
    ens_clean = result.curve(dataset, "ensemble", "clean_accuracy")
    ens_robust = {r.beta: r for r in robust_rows if r.dataset == dataset and r.family == "ensemble"}
    wanted: list[tuple[str, str, float]] = [("robust mode", "soup", 0.0), ("clean mode", "soup", 1.0)]
    for key, choice in result.selection.items():
        if isinstance(choice, Mapping) and "beta" in choice and choice.get("family") in CARD_FAMILIES:
            wanted.append((key.replace("_", " "), choice["family"], float(choice["beta"])))
    lines = ["| model | threat model | eps | clean accuracy (%) | robust accuracy (%) | attack | forward passes per "
             "image (inference; attack) | examples (clean; robust) |", "|---|---|---|---|---|---|---|---|"]
    seen = set()
    for title, family, beta in wanted:
        table_clean, table_robust = (clean, robust) if family == "soup" else (ens_clean, ens_robust)
        if (family, beta) in seen or beta not in table_robust or beta not in table_clean:
            continue
        seen.add((family, beta))
        r = table_robust[beta]
        t = r.threat_model or {}
        clean_n = next((x.num_examples for x in result.filter(dataset=dataset, family=family, beta=beta,
                                                               metric="clean_accuracy") if x.beta2 is None), 0)
        eps = t.get("epsilon")
        eps_text = format_epsilon(eps, t.get("norm", "linf")) if eps is not None else "-"
        attack_name = t.get("name") or t.get("attack")
        lines.append(
            f"| {family} beta={beta:g} ({title}) | {str(t.get('norm', '')).replace('linf', 'Linf').replace('l2', 'L2')}"
            f" | {eps_text} | {100 * table_clean[beta]:.2f} | {100 * r.value:.2f} | {attack_name} | "
            f"{r.compute}; {r.forward_passes / max(r.num_examples, 1):.1f} | {clean_n}; {r.num_examples} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


# --------------------------------------------------------------------------------------------------- training args
TRAINING_DETAIL_KEYS = (
    "model_name_or_path", "dataset_name", "adapter", "pooling", "image_size", "patch_size", "patch_stride",
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "drop_path_rate", "alpha",
    "train_attack", "train_attack_norm", "train_epsilon", "train_attack_steps", "train_attack_step_size",
    "eval_attack", "eval_epsilon", "eval_attack_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "base_learning_rate", "optim",
    "adam_beta1", "adam_beta2", "weight_decay", "lr_scheduler_type", "warmup_epochs", "warmup_ratio",
    "warmup_steps", "label_smoothing_factor", "ema_decay", "crop_min_scale", "horizontal_flip",
    "randaugment_num_layers", "randaugment_magnitude", "randaugment_prob", "mixup_alpha", "cutmix_alpha",
    "seed", "bf16",
)
"""Arguments shown in the card's training-details table, when the run recorded them (all are kept in
``training_args.json`` next to the card)."""


def load_training_arguments(path: str | os.PathLike) -> dict[str, Any]:
    """The run's arguments from a recipe / arguments file: ``.json`` or ``.yaml``/``.yml`` (a flat mapping or one
    mapping per argument group, which are merged), or the Trainer's ``training_args.bin``.

    ``training_args.bin`` is a pickle (``torch.load(weights_only=False)``): load only files from your own runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Training arguments file {str(path)!r} does not exist.")
    if path.suffix == ".bin":
        import torch

        args = torch.load(path, weights_only=False)
        data = args.to_dict() if hasattr(args, "to_dict") else vars(args)
    elif path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"Unsupported training arguments file {path.name!r}: use .json, .yaml, .yml or .bin.")
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(data).__name__}.")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and key.endswith(("args", "arguments")):
            flat.update(value)  # {"model_args": {...}, "training_args": {...}} groups
        else:
            flat[key] = value
    return flat


def training_details(arguments: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of :data:`TRAINING_DETAIL_KEYS` found in ``arguments`` (in that order)."""
    if not arguments:
        return []
    return [(key, _format_value(arguments[key])) for key in TRAINING_DETAIL_KEYS
            if key in arguments and arguments[key] is not None]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value).replace("|", "\\|")


# --------------------------------------------------------------------------------------------------- card
def template_path() -> Path:
    """Path of the card template shipped in the package (``hf_advsoup/templates/model_card.md``)."""
    return Path(str(resources.files("hf_advsoup") / "templates" / "model_card.md"))


@dataclass
class CardInputs:
    """Everything a card says besides the results: identity, model description and provenance."""

    model_name: str = field(metadata={"help": "Name in the model-index and the card title (e.g. the repo id)."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repo id used in the loading example."})
    license: str = field(default="apache-2.0", metadata={"help": "License identifier of the weights."})
    base_model: str | None = field(default=None, metadata={"help": "Checkpoint the run started from, if any."})
    datasets: list[DatasetInfo] = field(default_factory=list, metadata={"help": "Evaluated / training data sets."})
    training_datasets: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the training data."})
    paper_reference: str | None = field(
        default=None, metadata={"help": f"Key of PAPER_REFERENCES ({', '.join(PAPER_REFERENCES)})."}
    )
    training_arguments: dict[str, Any] | None = field(default=None, metadata={"help": "The run's arguments."})
    training_arguments_source: str = field(
        default="the run's arguments (all of them are in `training_args.json` next to this card)",
        metadata={"help": "Where the training details come from, as said on the card."},
    )
    plots: list[str] = field(default_factory=list, metadata={"help": "PNG file names next to the card."})
    description: str | None = field(default=None, metadata={"help": "Extra free text under the summary."})
    tags: list[str] = field(default_factory=lambda: list(DEFAULT_TAGS), metadata={"help": "Hub tags."})


def render_model_card(
    inputs: CardInputs,
    result: SoupEvaluation | None = None,
    model_config: Any = None,
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the card of a co-trained soup model with :meth:`huggingface_hub.ModelCard.from_template`.

    Args:
        inputs: identity, provenance and paper reference (:class:`CardInputs`).
        result: our measured numbers (a :class:`SoupEvaluation`), or ``None`` for a card without measured numbers
            (then the model-index is empty and the card says so).
        model_config: the model's ``AdvSoupViTConfig`` (architecture row of the card), optional.
        template: a Jinja card template; default: the one shipped in the package.
    """
    if inputs.paper_reference is not None and inputs.paper_reference not in PAPER_REFERENCES:
        raise ValueError(f"Unknown paper_reference {inputs.paper_reference!r}; valid: {', '.join(PAPER_REFERENCES)}.")
    datasets = {d.name: d for d in inputs.datasets}
    eval_results = build_eval_results(result, datasets) if result is not None else []
    hub_datasets = list(dict.fromkeys(
        [d for d in inputs.training_datasets if d] + [d.hub_id for d in inputs.datasets if d.hub_id]
    ))
    card_data = ModelCardData(
        model_name=inputs.model_name,
        license=inputs.license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=list(inputs.tags),
        datasets=hub_datasets or None,
        metrics=["accuracy"],
        base_model=inputs.base_model,
        eval_results=eval_results or None,
    )
    # Every attack behind a number of the card, named with its settings (soups and ensembles may differ from the
    # landscape's; the card reports soups and ensembles).
    threats = list(dict.fromkeys(
        describe_threat_model(r.threat_model) for r in (result.records if result is not None else [])
        if r.threat_model and r.family in CARD_FAMILIES
    ))
    architecture = None
    if model_config is not None:
        architecture = (
            f"ViT, hidden size {model_config.hidden_size}, {model_config.num_hidden_layers} layers, "
            f"{model_config.num_attention_heads} heads, image size {model_config.image_size}, patch "
            f"{model_config.patch_size}" + (f" (stride {model_config.patch_stride})" if model_config.patch_stride
                                            else "")
            + f", {model_config.num_labels} classes; adapter `{model_config.adapter}`, pooling "
            f"`{model_config.pooling}`, default beta {model_config.beta:g}"
        )
    reference = PAPER_REFERENCES.get(inputs.paper_reference) if inputs.paper_reference else None
    card = ModelCard.from_template(
        card_data,
        template_path=str(template or template_path()),
        model_name=inputs.model_name,
        repo_id=inputs.repo_id or inputs.model_name,
        description=inputs.description,
        architecture=architecture,
        default_beta=getattr(model_config, "beta", 1.0) if model_config is not None else 1.0,
        results_markdown=result.to_markdown() if result is not None else None,
        robustbench=robustbench_summary(result) if result is not None else "",
        threat_model="; ".join(threats) if threats else None,
        selection=result.selection if result is not None else {},
        plots=[(p, _plot_title(p)) for p in inputs.plots],
        paper=reference,
        paper_title=PAPER_TITLE,
        paper_url=PAPER_URL,
        training_details=training_details(inputs.training_arguments),
        training_source=inputs.training_arguments_source,
        citation=CITATION,
    )
    # Optional template blocks leave runs of blank lines; one is enough (no fenced block holds two in a row).
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)))


def _plot_title(name: str) -> str:
    stem = Path(name).stem
    if stem.startswith("tradeoff"):
        return "Clean vs robust accuracy of soups and ensembles (as Figure 4 of the paper)"
    if stem.startswith("landscape"):
        return "Accuracy landscape of beta1 * clean + beta2 * adversarial adapters (as Figure 8 of the paper)"
    if stem.startswith("accuracy_vs_beta"):
        return "Accuracy against beta (as Figure 5 and Table 9 of the paper)"
    return stem.replace("_", " ")


# --------------------------------------------------------------------------------------------------- staging and push
def stage_for_hub(
    folder: str | os.PathLike,
    *,
    model: Any,
    card: ModelCard,
    image_processor: Any = None,
    extra_files: Sequence[str | os.PathLike] = (),
    training_arguments: Mapping[str, Any] | None = None,
) -> Path:
    """Save model (``save_pretrained``: weights, config, remote code), image processor, card (``README.md``,
    written last so nothing overwrites it), ``training_args.json`` and ``extra_files`` (plots, results) into
    ``folder``. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if image_processor is not None:
        image_processor.save_pretrained(folder)
    for path in extra_files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"File to upload {str(path)!r} does not exist.")
        if path.resolve() != (folder / path.name).resolve():
            shutil.copy2(path, folder / path.name)
    if training_arguments:
        (folder / "training_args.json").write_text(
            json.dumps(dict(training_arguments), indent=2, default=str) + "\n", encoding="utf-8"
        )
    card.save(folder / "README.md")
    return folder


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or env.upper() in {"1", "ON", "YES", "TRUE"}


def check_can_push(token: str | None = None) -> str:
    """Return the token to push with, or raise :class:`HubPushError` with what to do: offline mode is on, no token
    is configured. No network call is made here."""
    if _offline():
        raise HubPushError(
            "Cannot push: offline mode is on (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1). Nothing was created or "
            "uploaded. Unset it to push, or use --no_push to only write the folder."
        )
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise HubPushError(
            "Cannot push: no Hugging Face token. Run `hf auth login`, set HF_TOKEN, or pass --token. Nothing was "
            "created or uploaded."
        )
    return token


def connect(token: str | None = None, api: HfApi | None = None) -> HfApi:
    """An :class:`~huggingface_hub.HfApi` that can push: offline mode and the token are checked
    (:func:`check_can_push`), then the Hub is asked who the token belongs to (``whoami``, one small request).

    Call it before writing anything large (the staged folder holds the whole model), so that a missing network or
    a rejected token stops the push while nothing has been written or created.

    Raises:
        HubPushError: offline mode, no token, the token rejected, or the Hub unreachable.
    """
    from huggingface_hub.errors import HfHubHTTPError

    token = check_can_push(token)
    api = api or HfApi(token=token)
    try:
        user = api.whoami()
    except HfHubHTTPError as error:
        raise HubPushError(f"Cannot push: the Hub rejected the token ({error}). Check it with `hf auth whoami` or "
                           "pass another one with --token. Nothing was created or uploaded.") from error
    except Exception as error:  # a network failure of any kind: we must not start pushing
        raise HubPushError(f"Cannot push: the Hub cannot be reached ({type(error).__name__}: {error}). Check the "
                           "network (or use --no_push to only write the folder). Nothing was created or "
                           "uploaded.") from error
    logger.info("Connected to the Hub as %s.", user.get("name", "?") if isinstance(user, Mapping) else "?")
    return api


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload adversarial soup model",
    api: HfApi | None = None,
) -> Any:
    """Upload ``folder`` to the model repo ``repo_id`` in a single commit (``HfApi.upload_folder``), creating the
    repo (and the branch ``revision``) if needed. Without an ``api`` from :func:`connect`, connects first (offline
    mode, token, ``whoami``), so a refused push creates nothing. Returns the ``CommitInfo``."""
    folder = Path(folder)
    if not (folder / "README.md").is_file() or not (folder / "config.json").is_file():
        raise HubPushError(f"{folder} is not a staged model folder (needs config.json and README.md).")
    api = api or connect(token)
    logger.info("Pushing %s to %s", folder, repo_id)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message, repo_type="model")


__all__ = [
    "CardInputs",
    "DatasetInfo",
    "HubPushError",
    "PAPER_REFERENCES",
    "PaperReference",
    "build_eval_results",
    "check_can_push",
    "connect",
    "load_training_arguments",
    "push_folder",
    "render_model_card",
    "robustbench_summary",
    "stage_for_hub",
    "template_path",
    "training_details",
]
