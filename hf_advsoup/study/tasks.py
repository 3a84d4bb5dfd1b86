"""What the study's jobs do (:data:`TASKS`): train a run, evaluate it, evaluate soups, fine-tune a transfer.

Each task takes its job's JSON ``spec`` and the folder it owns, and returns a JSON result. They call the library:
training is ``scripts/cotrain.py``'s ``main`` (the CoTrainer), evaluation
:func:`hf_advsoup.evaluation.evaluate_robustness`, soups :func:`hf_advsoup.soups.evaluate_soups`, transfer
:func:`hf_advsoup.transfer.run_transfer`. No second training loop, no second attack.

:func:`execute` is what a worker process runs (:mod:`hf_advsoup.study.jobs`): it sends everything the task prints
or logs -- Python, C libraries, tqdm -- to the job's log file, at the file-descriptor level.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["SOUP_POINTS", "TASKS", "execute", "init_worker", "report_attack_configs"]

logger = logging.getLogger(__name__)

HISTORY_KEYS = ("epoch", "step", "eval_clean_accuracy", "eval_robust_accuracy", "eval_robust_mode_clean_accuracy", "loss",
                "clean_loss", "adversarial_loss")
"""What the study keeps of a run's ``log_history`` (per-epoch monitoring and losses)."""

RECIPE_KEYS = {
    "model_args": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                   "patch_stride", "pooling", "drop_path_rate", "image_size"),
    "data_args": ("random_resized_crop", "crop_min_scale", "horizontal_flip"),
    "augmentation_args": ("randaugment_num_layers", "mixup_alpha", "cutmix_alpha"),
    "training_args": ("num_train_epochs", "per_device_train_batch_size", "optim", "adam_beta1", "adam_beta2",
                      "base_learning_rate", "learning_rate", "lr_scheduler_type", "warmup_epochs", "weight_decay",
                      "label_smoothing_factor", "ema_decay", "max_grad_norm", "train_attack", "train_epsilon",
                      "eval_attack", "eval_attack_steps", "robust_eval_samples", "catastrophic_overfitting_drop",
                      "catastrophic_overfitting_min_best"),
}
"""The settings read back from each run's ``run_args.json`` (the card states what ran, not what we believe the
defaults are)."""


# ----------------------------------------------------------------------------------------------- worker plumbing
def init_worker() -> None:
    """Initializer of a worker process: one torch thread, INFO logging to the (redirected) standard error."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


@contextlib.contextmanager
def _output_to(log_path: str):
    """Send file descriptors 1 and 2 (and so every Python or C writer, logging handlers included) to ``log_path``
    for the duration; restored afterwards."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def resolve_task(kind: str) -> Callable[[Mapping[str, Any], Path], dict[str, Any]]:
    """The function of a task: a name of :data:`TASKS`, or ``"package.module:function"`` (the tasks of other
    experiments, e.g. ``hf_advsoup.flagship.tasks:evaluate_attack``), imported in the worker that runs it."""
    if ":" in kind:
        module_name, _, function = kind.partition(":")
        task = getattr(importlib.import_module(module_name), function, None)
        if task is None:
            raise ValueError(f"Unknown task {kind!r}: {module_name} has no {function}.")
        return task
    if kind not in TASKS:
        raise ValueError(f"Unknown task {kind!r}; known: {', '.join(TASKS)}, or 'package.module:function'.")
    return TASKS[kind]


def execute(kind: str, spec: dict[str, Any], directory: str, log_path: str) -> dict[str, Any]:
    """Run task ``kind`` (:func:`resolve_task`) on ``spec`` in ``directory``, its output in ``log_path``; returns
    ``{"result", "wall_time_s"}``."""
    task = resolve_task(kind)
    with _output_to(log_path):
        start = time.perf_counter()
        try:
            result = task(spec, Path(directory))
        except BaseException:
            traceback.print_exc()  # into the job's log, where the error message points
            raise
        wall = time.perf_counter() - start
    return {"result": result, "wall_time_s": wall}


# ----------------------------------------------------------------------------------------------- shared helpers
_SCRIPTS: dict[str, Any] = {}


def _script(path: str):
    """The module of a script file (``scripts/cotrain.py``), loaded once per process."""
    if path not in _SCRIPTS:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"The training script {path} does not exist; the study trains with "
                                    "scripts/cotrain.py of the repository (pass cotrain_script=<its path>).")
        spec = importlib.util.spec_from_file_location(f"_study_{Path(path).stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def _load_model(path: str):
    from transformers import AutoImageProcessor

    from ..modeling_advsoup import AdvSoupViTForImageClassification

    model = AdvSoupViTForImageClassification.from_pretrained(path).eval()
    return model, AutoImageProcessor.from_pretrained(path)


def report_attack_configs(names: list[str], epsilon: str, steps: int | None = None) -> list:
    """The :class:`~hf_advsoup.attacks.AttackConfig` of each attack of record at ``epsilon`` (``steps``: an override
    of the step count, for smoke runs)."""
    from ..attacks import AttackConfig

    overrides: dict[str, Any] = {"epsilon": epsilon}
    if steps is not None:
        overrides["steps"] = steps
    return [AttackConfig.from_preset(name, **overrides) for name in names]


# ----------------------------------------------------------------------------------------------- tasks
def train(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """Train one run with ``scripts/cotrain.py``'s ``main(argv)``; return its per-epoch monitoring history, the
    recipe it recorded, its number of classes and its final validation metrics.

    spec: ``{"cotrain_script": path, "argv": [...]}`` (``argv`` holds ``--output_dir <directory>``); other keys
    (e.g. a hash of the recipe file) only make the job's fingerprint. In a folder that holds checkpoints (a
    resumable job interrupted earlier, :class:`~hf_advsoup.study.jobs.Job`) the run continues from the latest one,
    exactly (the library's resume); in a folder left without one it starts again."""
    cotrain = _script(spec["cotrain_script"])
    argv = list(spec["argv"])
    if directory.is_dir() and any(p.name.startswith("checkpoint-") for p in directory.iterdir()):
        argv += ["--resume_from_checkpoint", "latest"]
    elif directory.is_dir() and any(not p.name.startswith(".") for p in directory.iterdir()):
        argv += ["--overwrite_output_dir"]  # an interrupted start that saved no checkpoint: begin again
    metrics = cotrain.main(argv)
    state = json.loads((directory / "trainer_state.json").read_text())
    history = [{k: v for k, v in entry.items() if k in HISTORY_KEYS} for entry in state.get("log_history", [])]
    saved = json.loads((directory / "run_args.json").read_text())
    recipe = {key: saved.get(group, {}).get(key) for group, keys in RECIPE_KEYS.items() for key in keys}
    config = json.loads((directory / "config.json").read_text())
    return {"history": [h for h in history if set(h) - {"epoch", "step"}], "recipe": recipe,
            "num_labels": len(config.get("id2label", {})) or None,
            "final_validation": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}}


def run_script(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """Run a script of the repository's ``scripts/`` through its ``main(argv)`` (e.g. ``train_selector.py``); return
    the metrics it returns. spec: ``{"script": path, "argv": [...]}``."""
    metrics = _script(spec["script"]).main(list(spec["argv"]))
    return {"metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}}


def evaluate(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """Clean accuracy in clean mode (beta=1) and robust mode (beta=0) on the first ``clean_samples`` images of a
    split, and robust accuracy in robust mode against the attacks of record (the worst case over them, per image)
    on the first ``robust_samples``.

    spec: ``{"model_dir", "data_path", "split", "clean_samples", "robust_samples", "epsilon", "attacks" (preset
    names), "attack_steps", "seed", "batch_size" (optional, images per attack call: 500)}``. Single-copy models
    (adapter 'none') ignore beta. The per-image outcomes are returned packed (``outcomes``: clean mode's and robust
    mode's clean outcomes, robust mode's worst case over the attacks), for counts and paired comparisons."""
    import torch

    from ..attacks import Normalization
    from ..evaluation import evaluate_robustness
    from .data import load_eval_tensors

    from ..intervals import pack_flags

    model, processor = _load_model(spec["model_dir"])
    x, y = load_eval_tensors(spec["data_path"], spec["split"], processor, spec["clean_samples"])
    flags: dict[float, list] = {1.0: [], 0.0: []}
    with torch.no_grad():
        for i in range(0, x.shape[0], 256):
            for beta in flags:
                logits = model(pixel_values=x[i:i + 256], beta=beta).logits
                flags[beta].append(logits.argmax(-1) == y[i:i + 256])
    clean = {beta: torch.cat(parts) for beta, parts in flags.items()}
    n_robust = min(int(spec["robust_samples"]), x.shape[0])
    attacks = report_attack_configs(spec["attacks"], spec["epsilon"], spec.get("attack_steps"))
    start = time.perf_counter()
    result = evaluate_robustness(model, x[:n_robust], y[:n_robust], attacks,
                                 normalization=Normalization.from_processor(processor), forward_kwargs={"beta": 0.0},
                                 batch_size=int(spec.get("batch_size", 500)), seed=int(spec["seed"]),
                                 show_progress=False)
    return {
        "clean_accuracy_clean_mode": int(clean[1.0].sum()) / clean[1.0].numel(),  # exact: counts, not float32
        "clean_accuracy_robust_mode": int(clean[0.0].sum()) / clean[0.0].numel(),
        "robust_accuracy": result.robust_accuracy,
        "attack_accuracies": result.attack_accuracies,
        "outcomes": {"clean": pack_flags(clean[1.0]), "clean_robust_mode": pack_flags(clean[0.0]),
                     "robust": pack_flags(result.worst_case_correct)},
        "attacks": [{k: a[k] for k in ("label", "name", "epsilon", "steps", "restarts", "loss",
                                       "forward_passes_per_example")} for a in result.attacks],
        "num_clean_examples": int(x.shape[0]),
        "num_robust_examples": n_robust,
        "num_parameters": int(model.num_parameters()),
        "adapter": model.config.adapter,
        "attack_time_s": time.perf_counter() - start,
    }


SoupPoint = Callable[..., Mapping[str, Any]]
SOUP_POINTS: dict[str, SoupPoint] = {}
"""Extra settings of the co-trained model evaluated beside the soups (rows of the soups table, points of the
trade-off plot), by name. Each entry is ``prepare(model, data_path, seed) -> forward_kwargs``: it may fit
something on the study's validation split first (never on test), and returns the keyword arguments the model is
called with, e.g. ``{"beta": 0.7}``. A preset lists the names to evaluate in ``soup_extra_points``."""


def _merge_worst(evaluations: list) -> Any:
    """One :class:`~hf_advsoup.soups.SoupEvaluation` from one per attack of record: each robust number is the
    per-image worst case over the attacks (the clean numbers are the same in all)."""
    import dataclasses

    from ..soups import SoupEvaluation

    if len(evaluations) == 1:
        return evaluations[0]
    from ..intervals import pack_flags, unpack_flags

    merged: dict[tuple, Any] = {}
    for evaluation in evaluations:
        for record in evaluation.records:
            known = merged.get(record.key)
            if known is None:
                merged[record.key] = record
            elif record.metric == "robust_accuracy":  # per image, the worst case over the attacks
                both = unpack_flags(known.outcomes) & unpack_flags(record.outcomes)
                merged[record.key] = dataclasses.replace(known, value=float(both.mean()), outcomes=pack_flags(both),
                                                         forward_passes=known.forward_passes + record.forward_passes)
    names = " + ".join(e.settings["arguments"]["attack"] for e in evaluations)
    records = [dataclasses.replace(r, threat_model={**r.threat_model, "attack": f"lowest of {names}"})
               if r.threat_model else r for r in merged.values()]
    result = SoupEvaluation(records=records, settings={**evaluations[0].settings,
                                                       "attacks_of_record": [e.settings for e in evaluations]})
    return result


def soups(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """The soup sweep of the co-trained model vs ensembles vs the two-network soup (Table 9, Figure 4) with
    :func:`~hf_advsoup.soups.evaluate_soups`, once per attack of record (robust numbers: the lowest over them), plus
    the :data:`SOUP_POINTS` the spec names. Writes ``soup_results.{json,csv,md}`` in ``directory``.

    spec: ``{"cotrained_dir", "nominal_dir", "adversarial_dir", "data_path", "split", "betas", "clean_samples",
    "robust_samples", "epsilon", "attacks", "attack_steps", "seed", "extra_points", "dataset_title"}``."""
    from ..attacks import Normalization
    from ..evaluation import evaluate_robustness
    from ..soups import SoupEvaluationArguments, evaluate_soups
    from .data import load_eval_tensors

    model, processor = _load_model(spec["cotrained_dir"])
    nominal, _ = _load_model(spec["nominal_dir"])
    adversarial, _ = _load_model(spec["adversarial_dir"])
    x, y = load_eval_tensors(spec["data_path"], spec["split"], processor, spec["clean_samples"])
    normalization = Normalization.from_processor(processor)
    name = spec["dataset_title"]
    evaluations = []
    for attack in spec["attacks"]:
        arguments = SoupEvaluationArguments(
            betas=list(spec["betas"]), attack=attack, epsilon=spec["epsilon"], attack_steps=spec.get("attack_steps"),
            batch_size=int(spec.get("batch_size", 500)), max_robust_examples=spec["robust_samples"],
            seed=int(spec["seed"]), progress=False,
        )
        evaluations.append(evaluate_soups(model, {name: (x, y)}, arguments, normalization=normalization,
                                          independent_models=(nominal, adversarial)))
    result = _merge_worst(evaluations)
    result.save(directory)
    curves = {family: {metric: {str(b): v for b, v in result.curve(name, family, metric).items()}
                       for metric in ("clean_accuracy", "robust_accuracy")}
              for family in ("soup", "ensemble", "independent_soup")}
    packed = {family: {metric: {str(r.beta): r.outcomes for r in result.filter(dataset=name, family=family,
                                                                               metric=metric) if r.beta2 is None}
                       for metric in ("clean_accuracy", "robust_accuracy")}
              for family in ("soup", "ensemble", "independent_soup")}
    extra = {}
    n_robust = min(int(spec["robust_samples"]), x.shape[0])
    attacks = report_attack_configs(spec["attacks"], spec["epsilon"], spec.get("attack_steps"))
    for point in spec.get("extra_points", []):
        if point not in SOUP_POINTS:
            raise ValueError(f"Unknown soup point {point!r}; registered: {', '.join(SOUP_POINTS) or 'none'}.")
        forward_kwargs = dict(SOUP_POINTS[point](model, spec["data_path"], int(spec["seed"])))
        clean = evaluate_robustness(model, x, y, [], normalization=normalization, forward_kwargs=forward_kwargs,
                                    show_progress=False)
        robust = evaluate_robustness(model, x[:n_robust], y[:n_robust], attacks, normalization=normalization,
                                     forward_kwargs=forward_kwargs, seed=int(spec["seed"]), show_progress=False)
        extra[point] = {"clean_accuracy": clean.clean_accuracy, "robust_accuracy": robust.robust_accuracy,
                        "forward_kwargs": {k: str(v) for k, v in forward_kwargs.items()}}
    return {"curves": curves, "outcomes": packed, "extra_points": extra, "selection": result.selection,
            "files": ["soup_results.json", "soup_results.csv", "soup_results.md"],
            "num_clean_examples": int(x.shape[0]), "num_robust_examples": n_robust}


def transfer(spec: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """Fine-tune one cell of Table 6 with :func:`~hf_advsoup.transfer.run_transfer`: the paper's recipe
    (``PAPER_RECIPE``) with ``steps`` steps at batch ``batch_size``; accuracy on the target classes' test split.

    spec: ``{"source_dir", "data_path", "token_init", "strategy", "steps", "batch_size", "horizontal_flip",
    "seed"}``."""
    import datasets

    from ..data import DataArguments
    from ..training_args import CoTrainingArguments
    from ..transfer import PAPER_RECIPE, TransferArguments, run_transfer

    steps = int(spec["steps"])
    data_defaults = {**PAPER_RECIPE.data_defaults(), "horizontal_flip": bool(spec["horizontal_flip"])}
    training = {**PAPER_RECIPE.training_defaults(), "max_steps": steps, "warmup_steps": max(1, steps // 10),
                "per_device_train_batch_size": int(spec["batch_size"])}
    recipe = {k: v for k, v in {**training, **data_defaults}.items() if k not in ("alpha", "robust_eval_samples")}
    training.update({"per_device_eval_batch_size": 256, "eval_strategy": "no", "save_strategy": "no",
                     "logging_strategy": "no", "report_to": "none", "seed": int(spec["seed"]), "disable_tqdm": True,
                     "log_level": "warning"})
    target = datasets.load_from_disk(spec["data_path"])
    info = run_transfer(
        TransferArguments(model_name_or_path=spec["source_dir"], token_init=spec["token_init"],
                          strategy=spec["strategy"]),
        DataArguments(dataset_name=spec["data_path"], **data_defaults),
        CoTrainingArguments(output_dir=str(directory), **training),
        dataset_dict=target,
    )
    import torch

    from ..intervals import pack_flags
    from .data import load_eval_tensors

    model, processor = _load_model(str(directory))  # the saved (EMA) fine-tuned model, as Trainer evaluated it
    x, y = load_eval_tensors(spec["data_path"], "test", processor)
    with torch.no_grad():
        right = torch.cat([model(pixel_values=x[i:i + 256]).logits.argmax(-1) == y[i:i + 256]
                           for i in range(0, x.shape[0], 256)])
    return {"accuracy": int(right.sum()) / right.numel(), "trainer_test_accuracy": info.metrics["test_clean_accuracy"],
            "validation_accuracy": info.metrics["eval_clean_accuracy"], "outcomes": pack_flags(right),
            "num_test_examples": len(target["test"]), "recipe": recipe}


TASKS: dict[str, Callable[[Mapping[str, Any], Path], dict[str, Any]]] = {
    "train": train, "evaluate": evaluate, "soups": soups, "transfer": transfer,
}
