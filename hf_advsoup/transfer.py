"""Transfer learning from a co-trained model (appendix C and Table 6 of Rebuffi, Croce & Gowal, ICLR 2023).

A co-trained model has two classification tokens (or, for other adapters, two copies of its adapter). Before
fine-tuning, the soup ``beta * clean + (1 - beta) * adversarial`` of the **whole adapter** is baked into a
single-copy model (:meth:`~hf_advsoup.AdvSoupViTForImageClassification.export_soup`): ``beta = 0`` initialises the
token from robust mode, ``beta = 1`` from clean mode (Table 6 also uses 0.25, 0.5 and 0.75). The baked model gets a
new classifier for the target label count and is fine-tuned *nominally* (no attack) with one of four strategies:

=============  ==============================================================================================
``head``       the classifier only (Table 6, "Fine-tune head")
``head+token`` the classifier and the classification token ``vit.embeddings.cls_token`` ("head + cls token")
``all``        every weight ("Fine-tune all", the paper's best: 88.40% average)
``lora``       LoRA (peft) on the attention projections ``q_proj``/``v_proj`` plus the classifier (not in the
               paper). The token stays frozen: peft's ``modules_to_save`` saves modules, not bare parameters,
               so a trainable token would train but be missing from the saved adapter.
=============  ==============================================================================================

Each strategy trains exactly the parameters it names (:func:`trainable_parameter_names`); every other parameter
has ``requires_grad=False``. Training goes through the co-training Trainer with ``alpha=1`` (nominal training):
there is no second training loop. The paper's recipe (appendix C) is :data:`PAPER_RECIPE`, its data sets
:data:`TABLE6_DATASETS`, and :func:`write_results_table` writes a sweep in the layout of Table 6.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .configuration_advsoup import validate_beta, validate_choice
from .modeling_advsoup import AdvSoupViTForImageClassification

logger = logging.getLogger(__name__)

STRATEGIES = ("head", "head+token", "all", "lora")
"""Fine-tuning strategies: Table 6's three (head, head + classification token, all weights) and LoRA."""

STRATEGY_TITLES = {
    "head": "Fine-tune head",
    "head+token": "Fine-tune head + cls token",
    "all": "Fine-tune all",
    "lora": "Fine-tune LoRA (q, v) + head",
}
"""Row titles of the results table (the first three are Table 6's)."""

TOKEN_INIT_NAMES = {"robust": 0.0, "clean": 1.0}
"""Named token initialisations; any finite float is a soup ``beta`` (Table 6 uses 0.25, 0.5, 0.75)."""

TABLE6_DATASETS = ("cifar10", "cifar100", "sun397", "resisc45", "dmlab")
"""The transfer data sets of Table 6, keys of :data:`hf_advsoup.data.DATASET_PRESETS` (Hub id, columns, splits)."""

DATASET_TITLES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "sun397": "SUN-397",
    "resisc45": "RESISC-45",
    "dmlab": "DMLAB",
    "mnist": "MNIST",
    "svhn": "SVHN",
    "imagenet-1k": "ImageNet-1k",
    "digits": "Digits",
}
"""Row-group titles of the results table, as in Table 6; other data sets show under their own name."""

TABLE6_TOKEN_INITS = ("robust", "0.25", "0.5", "0.75", "clean")
"""The token initialisations of Table 6, in its column order."""

CLS_TOKEN = "vit.embeddings.cls_token"
HEAD_PREFIX = "classifier."
TRANSFER_CONFIG_NAME = "transfer_config.json"


# --------------------------------------------------------------------------------------------- recipe and arguments
@dataclass(frozen=True)
class TransferRecipe:
    """The fine-tuning recipe of appendix C (the same for every data set). Units: steps, not epochs.

    :meth:`training_defaults` and :meth:`data_defaults` map it onto the argument classes of the Trainer and of the
    data module; ``scripts/transfer.py`` installs them as parser defaults, so every value can be overridden from
    the command line (``--learning_rate 0.003``) or a YAML file.
    """

    optimizer: str = "sgd"  # SGD, not AdamW: the usual choice for ViT fine-tuning (BiT, ViT papers)
    momentum: float = 0.9
    batch_size: int = 512  # global batch; per-device = batch_size / (devices * gradient accumulation)
    max_grad_norm: float = 1.0  # clipping at global norm 1
    weight_decay: float = 0.0  # "no weight decay"
    label_smoothing: float = 0.1
    max_steps: int = 10_000  # "a total of 10k training steps" for every data set
    learning_rate: float = 0.01
    warmup_steps: int = 500  # linear ramp-up, then cosine decay to 0
    lr_scheduler_type: str = "cosine"
    ema_decay: float = 0.999
    random_resized_crop: bool = False  # no crops: "rescale the images to 224x224 without preserving aspect ratio"
    random_horizontal_flip: bool = True  # the only augmentation
    image_size: int = 224  # the paper's resolution; the script uses the source model's config.image_size

    def training_defaults(self) -> dict[str, Any]:
        """Field values for :class:`~hf_advsoup.training_args.CoTrainingArguments` (``alpha=1``: nominal)."""
        return {
            "alpha": 1.0,
            "optim": self.optimizer,
            "optim_args": f"momentum={self.momentum}",
            "per_device_train_batch_size": self.batch_size,
            "max_grad_norm": self.max_grad_norm,
            "weight_decay": self.weight_decay,
            "label_smoothing_factor": self.label_smoothing,
            "max_steps": self.max_steps,
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "lr_scheduler_type": self.lr_scheduler_type,
            "ema_decay": self.ema_decay,
            # Table 6 reports clean accuracy only: no robust-accuracy monitoring (an attack at every evaluation)
            # unless asked for.
            "robust_eval_samples": 0,
        }

    def data_defaults(self) -> dict[str, Any]:
        """Field values for :class:`~hf_advsoup.data.DataArguments` (pre-processing of appendix C)."""
        return {
            # random_resized_crop=False: a plain resize to the model's size, aspect ratio not kept (see data/transforms.py).
            "random_resized_crop": self.random_resized_crop,
            "horizontal_flip": self.random_horizontal_flip,
        }


PAPER_RECIPE = TransferRecipe()
"""Appendix C: SGD momentum 0.9, batch 512, clip 1, no weight decay, label smoothing 0.1, 10k steps, lr 0.01 with
500 warm-up steps then cosine, resize without keeping aspect ratio, random horizontal flip, EMA 0.999."""


@dataclass
class TransferArguments:
    """What to transfer and how (model side). Data and optimisation come from the data and Trainer arguments."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Co-trained source checkpoint: a local folder or a Hub id (required)."},
    )
    token_init: str = field(
        default="robust",
        metadata={
            "help": "How to initialise the classification token (and the rest of the adapter) before fine-tuning: "
            "'robust' (beta=0, adversarial token), 'clean' (beta=1) or a soup weight such as 0.5 (Table 6 uses "
            "0.25, 0.5, 0.75). The soup of the whole adapter is baked into a single-copy model."
        },
    )
    strategy: str = field(
        default="all",
        metadata={"help": f"Which parameters to fine-tune: one of {', '.join(STRATEGIES)}."},
    )
    keep_head: bool = field(
        default=False,
        metadata={
            "help": "Keep the source classifier instead of a fresh one. Only valid when the target data set has the "
            "source's label count (otherwise an error says so)."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (strategy 'lora')."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator; the update is scaled by alpha/r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Modules that get LoRA adapters (transformers 5.x ViT names the projections q/k/v/o_proj)."},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "After LoRA training, also save the merged full model (in <output_dir>/merged). No effect "
                  "on the other strategies, which save full models."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the source checkpoint."})

    def __post_init__(self):
        validate_choice("strategy", self.strategy, STRATEGIES)
        parse_token_init(self.token_init)  # fail early, with the valid options
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be a positive integer, got {self.lora_r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    @property
    def beta(self) -> float:
        """The soup weight baked into the token: 0 for 'robust', 1 for 'clean', else the float given."""
        return parse_token_init(self.token_init)[1]


@dataclass
class TransferInfo:
    """Provenance of a transferred model, saved as ``transfer_config.json`` next to it and shown on its card."""

    source: str
    token_init: str
    beta: float
    strategy: str
    dataset: str | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    source_adapter: str | None = None
    kept_head: bool = False
    lora: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None

    def save(self, directory: str | os.PathLike) -> None:
        with open(os.path.join(directory, TRANSFER_CONFIG_NAME), "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TransferInfo:
        with open(os.path.join(directory, TRANSFER_CONFIG_NAME)) as f:
            data = json.load(f)
        if data.get("id2label") is not None:
            data["id2label"] = {int(k): v for k, v in data["id2label"].items()}
        return cls(**data)


# ------------------------------------------------------------------------------------------------ token initialisation
def parse_token_init(token_init: str | float) -> tuple[str, float]:
    """Return ``(column_label, beta)`` for a token initialisation.

    ``"robust"`` -> ``("Robust mode", 0.0)``, ``"clean"`` -> ``("Clean mode", 1.0)``, ``"0.25"`` or ``0.25`` ->
    ``("β = 0.25", 0.25)`` (the column titles of Table 6). Raises a ``ValueError`` naming the valid options.
    """
    if isinstance(token_init, str):
        key = token_init.strip().lower()
        if key in TOKEN_INIT_NAMES:
            return f"{key.capitalize()} mode", TOKEN_INIT_NAMES[key]
        key = key.removeprefix("beta=").removeprefix("beta")
        try:
            value = float(key)
        except ValueError:
            raise ValueError(
                f"Unknown token_init {token_init!r}; valid options are 'robust' (beta=0), 'clean' (beta=1) or a "
                "finite soup weight such as '0.5'."
            ) from None
    else:
        value = token_init
    beta = validate_beta(value)
    if beta == 0.0:
        return "Robust mode", 0.0
    if beta == 1.0:
        return "Clean mode", 1.0
    return f"β = {beta:g}", beta


def bake_soup(model: AdvSoupViTForImageClassification, beta: float) -> AdvSoupViTForImageClassification:
    """A single-copy model (``adapter="none"``) with the soup of the whole adapter at ``beta`` baked in.

    Predicts exactly like ``model(x, beta=beta)`` (before any change to its head). A model that already has one copy
    (``adapter="none"``: a nominal/adversarial baseline or an exported soup) is returned unchanged; a warning says
    that ``beta`` has no effect on it.
    """
    beta = validate_beta(beta)
    if model.config.adapter == "none":
        if beta != float(model.config.beta):
            logger.warning(
                "The source model has a single copy of its parameters (adapter='none'); token_init/beta=%g has no "
                "effect on it.",
                beta,
            )
        return model
    return model.export_soup(beta)


def load_source_model(
    model_name_or_path: str, beta: float, revision: str | None = None, **kwargs
) -> AdvSoupViTForImageClassification:
    """Load a co-trained checkpoint (local folder or Hub id) and bake its soup at ``beta`` (see :func:`bake_soup`).

    Extra ``kwargs`` go to ``from_pretrained`` (e.g. ``dtype``). The source keeps its own head here; see
    :func:`replace_head`.
    """
    from .training import check_weight_files  # imported where used, like CoTrainer in run_transfer

    check_weight_files(model_name_or_path)  # a truncated weights file is named, not "incomplete metadata"
    model = AdvSoupViTForImageClassification.from_pretrained(model_name_or_path, revision=revision, **kwargs)
    baked = bake_soup(model, beta)
    baked.config.name_or_path = model.config.name_or_path
    return baked


# ---------------------------------------------------------------------------------------------------------------- head
def replace_head(
    model: AdvSoupViTForImageClassification, id2label: Mapping[int, str], keep_head: bool = False
) -> AdvSoupViTForImageClassification:
    """Give ``model`` a classifier for the target labels ``id2label`` (``{0: "airplane", ...}``), in place.

    By default the classifier is re-initialised (ViT's init: truncated normal with std ``initializer_range``, zero
    bias) even when the label count matches: the source classes are not the target classes. ``keep_head=True``
    keeps the source classifier, and raises a ``ValueError`` when its label count differs from the target's (never a
    silent shape error or a silently re-initialised head). ``config.id2label``/``label2id`` always follow the target.
    """
    id2label = {int(k): str(v) for k, v in id2label.items()}
    num_labels = len(id2label)
    if num_labels < 1 or sorted(id2label) != list(range(num_labels)):
        raise ValueError(f"id2label must map 0..N-1 to class names, got keys {sorted(id2label)[:10]}.")
    source_labels = model.config.num_labels
    if keep_head:
        if source_labels != num_labels:
            raise ValueError(
                f"keep_head=True but the source classifier has {source_labels} labels and the target data set has "
                f"{num_labels}: the source head does not fit. Drop keep_head to train a fresh {num_labels}-way head."
            )
    else:
        classifier = nn.Linear(model.config.hidden_size, num_labels)
        old = model.classifier
        old_param = next(old.parameters(), None)
        if old_param is not None:
            classifier.to(device=old_param.device, dtype=old_param.dtype)
        # Same initialisation as a fresh ViT classifier (trunc-normal std=initializer_range, zero bias).
        model._init_weights(classifier)
        model.classifier = classifier
        if source_labels != num_labels:
            logger.info("New %d-way classifier (the source had %d labels).", num_labels, source_labels)
    model.config.id2label = id2label
    model.config.label2id = {name: i for i, name in id2label.items()}
    model.num_labels = num_labels
    return model


# ---------------------------------------------------------------------------------------------------------- strategies
def trainable_parameter_names(model: nn.Module, strategy: str) -> list[str]:
    """Names of the parameters that ``strategy`` trains on a single-copy model (``adapter="none"``).

    ``head``: ``classifier.*``; ``head+token``: those and ``vit.embeddings.cls_token``; ``all``: every parameter.
    ``lora`` is resolved by peft (:func:`apply_strategy`): its trainable parameters are the LoRA matrices and the
    saved copy of the classifier.
    """
    validate_choice("strategy", strategy, STRATEGIES)
    names = [name for name, _ in model.named_parameters()]
    if strategy == "all":
        return names
    if strategy == "lora":
        raise ValueError("The 'lora' strategy's parameters are created by peft; call apply_strategy(model, 'lora').")
    selected = [n for n in names if n.startswith(HEAD_PREFIX)]
    if strategy == "head+token":
        if CLS_TOKEN not in names:
            raise ValueError(f"The model has no classification token {CLS_TOKEN!r} to train.")
        selected.append(CLS_TOKEN)
    if not selected:
        raise ValueError("The model has no classifier parameters (classifier is an identity: num_labels=0?).")
    return selected


def apply_strategy(model: AdvSoupViTForImageClassification, strategy: str, args: TransferArguments | None = None):
    """Freeze every parameter that ``strategy`` does not train; return the model to fine-tune.

    Requires a single-copy model (bake the soup first, :func:`bake_soup`), so that the parameters named by the
    strategy are the ones used in the forward. For ``lora``, returns a :class:`peft.PeftModel` with LoRA on
    ``args.lora_target_modules`` and the classifier in ``modules_to_save`` (the token stays frozen, see the module
    docstring); otherwise the model itself.
    """
    validate_choice("strategy", strategy, STRATEGIES)
    if getattr(model.config, "adapter", "none") != "none":
        raise ValueError(
            f"apply_strategy needs a single-copy model, got adapter={model.config.adapter!r}: bake the soup first "
            "(bake_soup(model, beta) or model.export_soup(beta))."
        )
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        args = args or TransferArguments(model_name_or_path="", strategy="lora")
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=list(args.lora_target_modules),
            modules_to_save=["classifier"],
        )
        # get_peft_model freezes the base model and marks the LoRA matrices and the classifier copy trainable.
        model = get_peft_model(model, config)
        _log_trainable(model, strategy, f" (LoRA rank {args.lora_r} on {', '.join(args.lora_target_modules)}, and "
                       "the classifier)")
        return model
    trainable = set(trainable_parameter_names(model, strategy))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    _log_trainable(model, strategy)
    return model


def _log_trainable(model: nn.Module, strategy: str, what: str = "") -> None:
    """Log ``Strategy 'head' trains N of M parameters (x%)``: the same line for every strategy, LoRA included (its
    total counts the frozen base weights, the LoRA matrices and peft's copy of the classifier)."""
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("Strategy %r trains %d of %d parameters (%.3f%%)%s.", strategy, n_train, n_all, 100 * n_train / n_all,
                what)


def prepare_transfer_model(
    args: TransferArguments, id2label: Mapping[int, str], model: AdvSoupViTForImageClassification | None = None
):
    """Source -> baked soup at ``args.beta`` -> head for ``id2label`` -> strategy applied. Returns the model to train.

    ``model`` (already loaded, possibly with two adapter copies) skips loading ``args.model_name_or_path``.
    """
    if model is None:
        if not args.model_name_or_path:
            raise ValueError("TransferArguments.model_name_or_path is required (a local folder or a Hub id).")
        model = load_source_model(args.model_name_or_path, args.beta, revision=args.revision)
    else:
        baked = bake_soup(model, args.beta)
        # A single-copy source is returned as is: copy it so that the caller's model (e.g. a sweep's source,
        # reused for every run) is never trained in place.
        model = copy.deepcopy(baked) if baked is model else baked
    model = replace_head(model, id2label, keep_head=args.keep_head)
    return apply_strategy(model, args.strategy, args)


# --------------------------------------------------------------------------------------------------- saving, loading
def save_transfer_model(
    model: nn.Module,
    output_dir: str | os.PathLike,
    info: TransferInfo,
    image_processor=None,
    merge_lora: bool = False,
) -> str:
    """Save a fine-tuned model with ``transfer_config.json`` and its model card; returns the folder it wrote.

    A LoRA model (``peft.PeftModel``) saves its adapter (LoRA matrices and the classifier); reload it with
    :func:`load_transfer_model`, which rebuilds the baked base from the source and ``beta``. With ``merge_lora``
    the merged full model is also saved under ``<output_dir>/merged`` (a plain checkpoint, no peft needed).
    """
    os.makedirs(output_dir, exist_ok=True)
    is_peft = _is_peft_model(model)
    model.save_pretrained(output_dir)
    folders = [str(output_dir)]
    if is_peft and merge_lora:
        merged_dir = os.path.join(output_dir, "merged")
        merged = merge_lora_model(model)
        merged.save_pretrained(merged_dir)
        folders.append(merged_dir)
    for folder in folders:
        if image_processor is not None:
            image_processor.save_pretrained(folder)
        info.save(folder)
        # Written after save_pretrained: peft writes its own README.md.
        build_model_card(info, is_adapter=is_peft and folder == str(output_dir)).save(os.path.join(folder, "README.md"))
    return str(output_dir)


def merge_lora_model(model) -> AdvSoupViTForImageClassification:
    """Merge LoRA into the base weights of a copy of ``model`` (the trained PeftModel itself stays usable)."""
    return copy.deepcopy(model).merge_and_unload()


def load_transfer_model(path: str | os.PathLike, merge: bool = False, **kwargs):
    """Load what :func:`save_transfer_model` wrote: a full model, or a LoRA adapter on its rebuilt base.

    For an adapter, the base is the source checkpoint of ``transfer_config.json`` baked at its ``beta`` with a
    head of the saved label count (the trained head comes from the adapter). ``merge=True`` returns the merged
    plain model. ``kwargs`` go to the source's ``from_pretrained``.
    """
    if not os.path.exists(os.path.join(path, "adapter_config.json")):
        return AdvSoupViTForImageClassification.from_pretrained(path, **kwargs)
    from peft import PeftModel

    info = TransferInfo.load(path)
    base = load_source_model(info.source, info.beta, **kwargs)
    base = replace_head(base, info.id2label, keep_head=info.kept_head)
    model = PeftModel.from_pretrained(base, path)
    return model.merge_and_unload() if merge else model


def _is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but only LoRA needs it
        return False
    return isinstance(model, PeftModel)


# ------------------------------------------------------------------------------------------------------- model card
_CARD_TEMPLATE = """---
{card_data}
---

# {title}

This model was fine-tuned with `hf_advsoup.transfer` (appendix C of Rebuffi, Croce & Gowal, "Revisiting adapters
with adversarial training", ICLR 2023). It is a single-copy ViT: the soup of the co-trained model's clean and
adversarial adapters at the beta below was baked in before fine-tuning.

| | |
|---|---|
| transferred from | `{source}` (adapter `{source_adapter}`) |
| classification token initialised from | {token_init} (beta = {beta:g}; 1 = clean mode, 0 = robust mode) |
| fine-tuning strategy | `{strategy}`: {strategy_title} |
| target data set | {dataset} ({num_labels} labels) |
| source head kept | {kept_head} |
{extra_rows}
## Recipe

{recipe}

## Results

{results}

## Usage

```python
{usage}
```
"""


def build_model_card(info: TransferInfo, is_adapter: bool = False):
    """The model card (``huggingface_hub.ModelCard``) of a transferred model: provenance, recipe and metrics."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    eval_results = []
    _, accuracy = headline_metric(info.metrics or {})
    if accuracy is not None and info.dataset:
        eval_results.append(
            EvalResult(
                task_type="image-classification",
                dataset_type=info.dataset,
                dataset_name=info.dataset,
                metric_type="accuracy",
                metric_value=float(accuracy),
            )
        )
    is_hub_id = info.source.count("/") == 1 and not os.path.exists(info.source)
    card_data = ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag="image-classification",
        tags=["hf_advsoup", "adversarial-soup", "transfer-learning", f"strategy-{info.strategy}"],
        base_model=info.source if is_hub_id else None,
        datasets=[info.dataset] if info.dataset and "/" in info.dataset else None,
        model_name=f"advsoup-transfer-{info.strategy}",
        eval_results=eval_results or None,
    )
    extra_rows = ""
    if info.lora:
        extra_rows = "| LoRA | " + ", ".join(f"{k}={v}" for k, v in sorted(info.lora.items())) + " |\n"
    recipe = "\n".join(f"- `{k}`: {v}" for k, v in sorted((info.recipe or {}).items())) or "not recorded"
    results = "\n".join(f"- `{k}`: {v:.4f}" for k, v in sorted((info.metrics or {}).items())) or "not evaluated"
    if is_adapter:
        usage = (
            "from hf_advsoup.transfer import load_transfer_model\n"
            "model = load_transfer_model(path)              # LoRA adapter on the baked source\n"
            "merged = load_transfer_model(path, merge=True)  # plain model"
        )
    else:
        usage = (
            "import hf_advsoup  # registers the model with the Auto classes\n"
            "from transformers import pipeline\n"
            "classifier = pipeline('image-classification', model=path)"
        )
    text = _CARD_TEMPLATE.format(
        card_data=card_data.to_yaml(),
        title=f"{info.source.rstrip('/').split('/')[-1]} transferred to {info.dataset or 'a new task'} ({info.strategy})",
        source=info.source,
        source_adapter=info.source_adapter or "unknown",
        token_init=parse_token_init(info.token_init)[0],
        beta=info.beta,
        strategy=info.strategy,
        strategy_title=STRATEGY_TITLES[info.strategy],
        dataset=info.dataset or "unknown",
        num_labels=info.num_labels,
        kept_head=info.kept_head,
        extra_rows=extra_rows,
        recipe=recipe,
        results=results,
        usage=usage,
    )
    return ModelCard(text)


# ------------------------------------------------------------------------------------------------------ training
def labels_from_dataset(dataset) -> dict[int, str]:
    """``id2label`` from the canonical ``label`` column (a :class:`datasets.ClassLabel`) of a split."""
    import datasets

    feature = dataset.features.get("label")
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(
            f"The data set needs a ClassLabel 'label' column (load it with hf_advsoup.data.load_image_dataset); got "
            f"columns {dict(dataset.features)}."
        )
    return dict(enumerate(feature.names))


def load_image_processor(model_name_or_path: str, image_size, revision: str | None = None):
    """The source's image processor (its mean/std) set to resize to ``image_size`` (int or (height, width)).

    Appendix C resizes every data set to the model's resolution without keeping the aspect ratio. A source without
    a saved processor gets ViT's defaults (mean = std = 0.5), with a warning: the normalisation must be the one the
    source was trained with.
    """
    from transformers import AutoImageProcessor
    from transformers.models.vit import ViTImageProcessorPil

    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, revision=revision)
    except OSError as err:
        logger.warning(
            "No image processor found with %s (%s); using ViT's defaults (mean = std = 0.5). Save the source's "
            "processor next to it if it was trained with another normalisation.",
            model_name_or_path,
            str(err).splitlines()[0],
        )
        processor = ViTImageProcessorPil()
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return type(processor).from_dict(processor.to_dict(), size={"height": int(height), "width": int(width)})


def headline_metric(metrics: Mapping[str, float]) -> tuple[str | None, float | None]:
    """The accuracy a results table reports: test accuracy when the data set has a test split (the paper reports
    test accuracy), else validation accuracy. Returns ``(metric_name, value)``."""
    for name in ("test_clean_accuracy", "eval_clean_accuracy"):
        if name in metrics:
            return name, float(metrics[name])
    return None, None


def run_transfer(
    transfer_args: TransferArguments,
    data_args,
    training_args,
    dataset_dict=None,
    source_model: AdvSoupViTForImageClassification | None = None,
) -> TransferInfo:
    """Fine-tune one transfer (one cell of Table 6) and save it in ``training_args.output_dir``.

    Args:
        transfer_args: source, token initialisation, strategy (:class:`TransferArguments`).
        data_args: :class:`hf_advsoup.data.DataArguments` (ignored when ``dataset_dict`` is given, except for its
            augmentation flags).
        training_args: :class:`hf_advsoup.training_args.CoTrainingArguments` with ``alpha=1`` (nominal
            fine-tuning; see :meth:`TransferRecipe.training_defaults` for the paper's values).
        dataset_dict: an already loaded ``DatasetDict`` (canonical ``image``/``label`` columns) to reuse.
        source_model: an already loaded source (two adapter copies or one) to reuse; it is not modified.

    Training runs through :class:`hf_advsoup.training.CoTrainer` (its loss with label smoothing, its EMA; no second
    training loop). Evaluation uses the EMA weights, on ``validation`` and on ``test`` when present; the saved model
    (or LoRA adapter) holds the EMA weights too. Returns the :class:`TransferInfo` written next to the model, with
    the metrics.
    """
    from .data import collate_fn, load_image_dataset, set_image_transforms
    from .training import CoTrainer

    if float(training_args.alpha) != 1.0:
        raise ValueError(
            f"Transfer fine-tunes nominally (appendix C): alpha must be 1 (no attack), got alpha={training_args.alpha}."
        )
    if dataset_dict is None:
        dataset_dict = load_image_dataset(data_args)
    id2label = labels_from_dataset(dataset_dict["train"])
    source = transfer_args.model_name_or_path
    if source_model is None:
        source_model = AdvSoupViTForImageClassification.from_pretrained(source, revision=transfer_args.revision)
    source_adapter = source_model.config.adapter
    model = prepare_transfer_model(transfer_args, id2label, model=source_model)
    config = model.config
    processor = load_image_processor(source, config.image_size, revision=transfer_args.revision)
    set_image_transforms(dataset_dict, processor, data_args)

    trainer = CoTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset_dict["train"],
        eval_dataset=dataset_dict["validation"],
        data_collator=collate_fn,
        processing_class=processor,
    )
    trainer.train()
    metrics = dict(trainer.evaluate())
    if "test" in dataset_dict:
        metrics.update(trainer.evaluate(dataset_dict["test"], metric_key_prefix="test"))
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

    lora = None
    if transfer_args.strategy == "lora":
        lora = {
            "r": transfer_args.lora_r,
            "lora_alpha": transfer_args.lora_alpha,
            "lora_dropout": transfer_args.lora_dropout,
            "target_modules": list(transfer_args.lora_target_modules),
        }
    recipe_keys = list(PAPER_RECIPE.training_defaults()) + ["seed", "gradient_accumulation_steps"]
    recipe = {k: getattr(training_args, k) for k in recipe_keys if hasattr(training_args, k)}
    recipe.update({k: getattr(data_args, k) for k in PAPER_RECIPE.data_defaults() if hasattr(data_args, k)})
    recipe["image_size"] = config.image_size
    recipe = {k: (v.value if hasattr(v, "value") else v) for k, v in recipe.items()}  # enums -> strings for JSON
    report = getattr(dataset_dict, "report", None)
    info = TransferInfo(
        source=source,
        token_init=transfer_args.token_init,
        beta=transfer_args.beta,
        strategy=transfer_args.strategy,
        dataset=getattr(data_args, "dataset_name", None) if report is None else _dataset_name(data_args, report),
        num_labels=len(id2label),
        id2label=id2label,
        source_adapter=source_adapter,
        kept_head=transfer_args.keep_head,
        lora=lora,
        recipe=recipe,
        metrics=metrics,
    )
    if training_args.should_save:
        ema = trainer.ema
        # The EMA weights are the fine-tuned model (as in the paper); the raw weights stay in the checkpoints.
        swap = ema.swapped(trainer.model) if ema is not None and ema.initialized else contextlib.nullcontext()
        with swap:
            save_transfer_model(
                trainer.model, training_args.output_dir, info, image_processor=processor,
                merge_lora=transfer_args.merge_lora,
            )
    name, value = headline_metric(metrics)
    logger.info("Transfer %s -> %s (%s, %s): %s = %s", source, info.dataset, transfer_args.token_init,
                transfer_args.strategy, name, value)
    return info


def _dataset_name(data_args, report) -> str:
    # The Hub id when the data came from a preset or the Hub, so that the card links the data set.
    source = getattr(report, "source", "") or ""
    if source.startswith("preset:"):
        from .data import DATASET_PRESETS

        preset = DATASET_PRESETS.get(source.split(":", 1)[1])
        if preset is not None and preset.hub_id:
            return preset.hub_id
    if source.startswith("hub:"):
        return source.split(":", 1)[1]
    return data_args.dataset_name


# --------------------------------------------------------------------------------------------------------- sweep
@dataclass
class SweepArguments:
    """A sweep over data sets x strategies x token initialisations (Table 6), with optional baseline columns."""

    sweep: bool = field(
        default=False, metadata={"help": "Run the sweep (Table 6) instead of a single transfer."}
    )
    datasets: list[str] = field(
        default_factory=lambda: list(TABLE6_DATASETS),
        metadata={"help": "Data sets of the sweep: preset names (hf_advsoup.data.DATASET_PRESETS), Hub ids or local "
                  "paths. Default: Table 6's CIFAR-10, CIFAR-100, SUN-397, RESISC-45, DMLab."},
    )
    dataset_paths: list[str] = field(
        default_factory=list,
        metadata={"help": "Local copies of preset data sets, as NAME=PATH (e.g. cifar10=/data/cifar10, a "
                  "save_to_disk folder in the Hub schema): loaded from PATH with the preset's columns and splits."},
    )
    strategies: list[str] = field(
        default_factory=lambda: ["head", "head+token", "all"],
        metadata={"help": f"Strategies of the sweep, among {', '.join(STRATEGIES)}. Default: Table 6's three."},
    )
    token_inits: list[str] = field(
        default_factory=lambda: list(TABLE6_TOKEN_INITS),
        metadata={"help": "Token initialisations of the sweep: robust, clean or soup weights. Default: Table 6's "
                  "robust, 0.25, 0.5, 0.75, clean."},
    )
    baselines: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra single-model columns, as LABEL=SOURCE (e.g. Nominal=runs/nominal "
                  "Adversarial=runs/adv): Table 6's baselines pre-trained nominally / adversarially."},
    )
    table_name: str = field(
        default="transfer_table", metadata={"help": "Base name of the table files (<output_dir>/<name>.md/.json)."}
    )
    skip_completed: bool = field(
        default=True,
        metadata={"help": "Reuse the metrics of runs whose folder already holds transfer_config.json (resume a "
                  "sweep)."},
    )

    def __post_init__(self):
        for strategy in self.strategies:
            validate_choice("strategy", strategy, STRATEGIES)
        for token_init in self.token_inits:
            parse_token_init(token_init)
        for item in list(self.dataset_paths) + list(self.baselines):
            if "=" not in item:
                raise ValueError(f"Expected NAME=PATH, got {item!r}.")
        if not (self.datasets and self.strategies and (self.token_inits or self.baselines)):
            raise ValueError("A sweep needs at least one data set, one strategy and one token init or baseline.")

    def sources(self, model_name_or_path: str) -> list[tuple[str, str, str]]:
        """The table's columns as ``(column title, source, token_init)``: baselines first, then token inits."""
        columns = [(label, path, "clean") for label, path in (b.split("=", 1) for b in self.baselines)]
        columns += [(parse_token_init(t)[0], model_name_or_path, t) for t in self.token_inits]
        titles = [c[0] for c in columns]
        if len(set(titles)) != len(titles):
            raise ValueError(f"Duplicate sweep columns: {titles}.")
        return columns


def preset_data_arguments(data_args, dataset: str, local_path: str | None = None):
    """``data_args`` for one data set of a sweep: ``dataset_name=dataset``, or, with ``local_path``, that path with
    the preset's columns and splits (fields the user set explicitly win)."""
    from .data import DATASET_PRESETS

    if local_path is None:
        return dataclasses.replace(data_args, dataset_name=dataset)
    preset = DATASET_PRESETS.get(dataset)
    if preset is None:
        raise ValueError(f"--dataset_paths names {dataset!r}, which is not a preset: {', '.join(DATASET_PRESETS)}.")
    fields = {"image_column": preset.image_column, "label_column": preset.label_column,
              "train_split": preset.train_split, "eval_split": preset.eval_split, "test_split": preset.test_split,
              "validation_fraction": preset.validation_fraction if preset.eval_split is None else None}
    changes = {k: v for k, v in fields.items() if getattr(data_args, k) is None and v is not None}
    return dataclasses.replace(data_args, dataset_name=local_path, **changes)


def run_sweep(
    sweep_args: SweepArguments, transfer_args: TransferArguments, data_args, training_args
) -> tuple[list[TransferResult], tuple[str, str]]:
    """Every (data set, strategy, column) transfer of the sweep, then the results table (Table 6 layout).

    Runs go to ``<output_dir>/<dataset>/<strategy>/<column>``; the table (``<output_dir>/<table_name>.md`` and
    ``.json``) is rewritten after every run, so an interrupted sweep leaves a partial table, and a rerun reuses
    finished runs (``skip_completed``). Returns the results and the two table paths.
    """
    from tqdm.auto import tqdm

    from .data import load_image_dataset

    local = dict(item.split("=", 1) for item in sweep_args.dataset_paths)
    columns = sweep_args.sources(transfer_args.model_name_or_path)
    table_kwargs = dict(datasets=sweep_args.datasets, strategies=sweep_args.strategies,
                        columns=[c[0] for c in columns], dataset_titles=DATASET_TITLES)
    root = training_args.output_dir
    sources: dict[str, AdvSoupViTForImageClassification] = {}
    results: list[TransferResult] = []
    total = len(sweep_args.datasets) * len(sweep_args.strategies) * len(columns)
    with tqdm(total=total, desc="transfer sweep") as progress:
        for dataset in sweep_args.datasets:
            dataset_dict = None
            for strategy in sweep_args.strategies:
                for title, source, token_init in columns:
                    out = os.path.join(root, _slug(dataset), _slug(strategy), _slug(title))
                    info = None
                    if sweep_args.skip_completed and os.path.isfile(os.path.join(out, TRANSFER_CONFIG_NAME)):
                        info = TransferInfo.load(out)
                        logger.info("Reusing the finished run in %s.", out)
                    else:
                        run_data_args = preset_data_arguments(data_args, dataset, local.get(dataset))
                        if dataset_dict is None:
                            dataset_dict = load_image_dataset(run_data_args)
                        # --revision names a revision of the co-trained source, not of the baselines.
                        revision = transfer_args.revision if source == transfer_args.model_name_or_path else None
                        if source not in sources:
                            sources[source] = AdvSoupViTForImageClassification.from_pretrained(
                                source, revision=revision
                            )
                        run_args = dataclasses.replace(
                            transfer_args, model_name_or_path=source, token_init=token_init, strategy=strategy,
                            revision=revision,
                        )
                        run_training_args = dataclasses.replace(training_args, output_dir=out)
                        info = run_transfer(run_args, run_data_args, run_training_args, dataset_dict=dataset_dict,
                                            source_model=sources[source])
                    results.append(TransferResult(dataset=dataset, strategy=strategy, column=title,
                                                  accuracy=headline_metric(info.metrics or {})[1], output_dir=out))
                    if training_args.should_save:  # one writer under multi-process launches
                        write_results_table(results, root, name=sweep_args.table_name, **table_kwargs)
                    progress.update()
    paths = tuple(os.path.join(root, f"{sweep_args.table_name}.{ext}") for ext in ("md", "json"))
    return results, paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace("β = ", "beta").replace("+", "_"))


# ------------------------------------------------------------------------------------------------- results table
@dataclass
class TransferResult:
    """One cell of Table 6: top-1 accuracy (in [0, 1]) of ``strategy`` from ``column`` on ``dataset``."""

    dataset: str
    strategy: str
    column: str
    accuracy: float | None
    output_dir: str | None = None


def results_table(
    results: Sequence[TransferResult],
    datasets: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    dataset_titles: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Table 6's layout: one group of rows per data set (one row per strategy), one column per token
    initialisation (or baseline), and an AVERAGE group (mean over data sets, only where every data set has a value).

    Orders default to first appearance in ``results``. Returns ``(markdown, json_dict)``; accuracies are shown as
    percentages with two decimals, missing cells as "—".
    """
    datasets = list(datasets or dict.fromkeys(r.dataset for r in results))
    strategies = list(strategies or dict.fromkeys(r.strategy for r in results))
    columns = list(columns or dict.fromkeys(r.column for r in results))
    titles = dict(dataset_titles or {})
    cells: dict[tuple[str, str, str], float | None] = {}
    for r in results:
        cells[(r.dataset, r.strategy, r.column)] = r.accuracy

    def fmt(value: float | None) -> str:
        return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"

    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for d in datasets:
        table[d] = {s: {c: cells.get((d, s, c)) for c in columns} for s in strategies}
    average: dict[str, dict[str, float | None]] = {}
    for s in strategies:
        average[s] = {}
        for c in columns:
            values = [table[d][s][c] for d in datasets]
            complete = all(v is not None and math.isfinite(v) for v in values)
            average[s][c] = sum(values) / len(values) if complete and values else None

    lines = ["| Setup | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for d in datasets:
        lines.append(f"| **{titles.get(d, d)}** |" + " |" * len(columns))
        for s in strategies:
            lines.append(f"| {STRATEGY_TITLES[s]} | " + " | ".join(fmt(table[d][s][c]) for c in columns) + " |")
    lines.append("| **AVERAGE** |" + " |" * len(columns))
    for s in strategies:
        lines.append(f"| {STRATEGY_TITLES[s]} | " + " | ".join(fmt(average[s][c]) for c in columns) + " |")
    markdown = "\n".join(lines) + "\n"
    data = {
        "columns": columns,
        "datasets": datasets,
        "strategies": strategies,
        "accuracy": table,
        "average": average,
        "runs": [dataclasses.asdict(r) for r in results],
    }
    return markdown, data


def write_results_table(
    results: Sequence[TransferResult], output_dir: str | os.PathLike, name: str = "transfer_table", **kwargs
) -> tuple[str, str]:
    """Write :func:`results_table` as ``<name>.md`` and ``<name>.json`` in ``output_dir``; returns both paths."""
    markdown, data = results_table(results, **kwargs)
    os.makedirs(output_dir, exist_ok=True)
    md_path = os.path.join(output_dir, f"{name}.md")
    json_path = os.path.join(output_dir, f"{name}.json")
    with open(md_path, "w") as f:
        f.write(markdown)
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2)
    return md_path, json_path
