#!/usr/bin/env python
"""Stage a co-trained soup model with its model card, plots and results in one folder and upload it to the Hub.

Launch::

    # After `scripts/cotrain.py scripts/configs/digits_tiny.yaml --output_dir runs/digits` and `scripts/evaluate_soups.py ... --output_dir runs/soups`:
    python scripts/push_to_hub.py --model_name_or_path runs/digits --results_dir runs/soups \\
        --repo_id your-name/advsoup-vit-digits --paper_reference digits-tiny --private

    # Write the folder (model, processor, README.md card, plots, results) without uploading:
    python scripts/push_to_hub.py --model_name_or_path runs/digits --results_dir runs/soups \\
        --repo_id your-name/advsoup-vit-digits --output_dir runs/hub --no_push

    # Upload a folder already laid out as the Hub repository (the flagship's, written by scripts/flagship.py):
    python scripts/push_to_hub.py --folder model_cards/fashion-mnist-flagship --repo_id your-name/advsoup-vit-fmnist

    # Render only a card (no model), e.g. the cards of model_cards/ from their spec files:
    python scripts/push_to_hub.py --card_only --card_spec model_cards/imagenet-vit-b16.yaml

The upload is one commit of the whole folder (``HfApi.upload_folder``), so the card written here is kept
(``model.push_to_hub`` would overwrite README.md). Offline (``HF_HUB_OFFLINE=1``), without a token, with a rejected
token or without a network the script stops before writing or creating anything, with a message saying what to do.
Without ``--output_dir`` the folder is staged in a temporary folder, deleted after the upload (or its failure).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
)

from hf_advsoup.cli import check_output_dir, check_output_file, run
from hf_advsoup.hub import (
    PAPER_REFERENCES,
    CardInputs,
    DatasetInfo,
    HubPushError,
    connect,
    load_training_arguments,
    push_folder,
    render_model_card,
    stage_for_hub,
)
from hf_advsoup.soups import SoupEvaluation
from hf_advsoup.trainer import check_weight_files

logger = logging.getLogger("push_to_hub")

RESULT_FILES = ("soup_results.json", "soup_results.csv", "soup_results.md")
TRAINING_ARGS_CANDIDATES = ("run_args.json", "training_args.json", "run_args.yaml")
"""Files in the checkpoint folder read for the card's training details when --training_args_file is not given."""


@dataclass
class PushArguments:
    """What to stage and where to push it."""

    repo_id: str | None = field(
        default=None, metadata={"help": "Hub repo id (user/name); also the model name of the card."}
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "The co-trained checkpoint folder."})
    folder: str | None = field(
        default=None,
        metadata={"help": "A folder already laid out as the Hub repository (card, config, weights, processor, results; "
                  "e.g. model_cards/fashion-mnist-flagship, written by scripts/flagship.py): uploaded as it is, the "
                  "model's remote code added from the installed package where the folder lacks it. Replaces "
                  "--model_name_or_path and --results_dir."},
    )
    results_dir: str | None = field(
        default=None,
        metadata={"help": "Output folder of scripts/evaluate_soups.py (soup_results.json and PNG plots)."},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Staging folder (must be empty or new), kept. Default: a temporary folder, deleted "
                  "after the upload or its failure (kept and printed with --no_push)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    commit_message: str = field(default="Upload adversarial soup model (hf_advsoup)",
                                metadata={"help": "Commit message."})
    token: str | None = field(default=None, metadata={"help": "Hub token; default: the logged-in one / HF_TOKEN."})
    paper_reference: str | None = field(
        default=None,
        metadata={"help": f"Paper numbers to show, labelled as the paper's: {', '.join(PAPER_REFERENCES)}."},
    )
    training_args_file: str | None = field(
        default=None,
        metadata={"help": "The run's arguments (.json/.yaml recipe, or the Trainer's training_args.bin: a pickle, "
                  "only from your own runs). Default: run_args.json / training_args.json in the checkpoint."},
    )
    license: str = field(default="apache-2.0", metadata={"help": "License of the weights."})
    base_model: str | None = field(default=None, metadata={"help": "Checkpoint the run started from."})
    description: str | None = field(default=None, metadata={"help": "Extra text for the card's summary."})
    no_push: bool = field(default=False, metadata={"help": "Only write the folder; do not upload."})
    card_only: bool = field(
        default=False, metadata={"help": "Only render the card (no model) to --card_path; no upload."}
    )
    card_spec: str | None = field(
        default=None,
        metadata={"help": "YAML of CardInputs fields plus optional `recipe`, `results_dir`, `card_path` (see "
                  "model_cards/). Values given on the command line win."},
    )
    card_path: str | None = field(default=None, metadata={"help": "Where --card_only writes the card."})


def _apply_spec(args: PushArguments) -> tuple[PushArguments, dict]:
    """Merge a card spec file into the arguments (command-line values win) and return the spec's extras."""
    if args.card_spec is None:
        return args, {}
    spec_path = Path(args.card_spec)
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
    base = spec_path.parent
    for key in ("results_dir", "card_path", "training_args_file"):
        if spec.get(key):
            spec[key] = str((base / spec[key]).resolve()) if not Path(spec[key]).is_absolute() else spec[key]
    if spec.get("recipe"):
        # The recipe the project ships for this configuration: its arguments are the run's arguments (when the
        # file exists; otherwise the spec's inline `training_arguments` are used).
        recipe = Path(spec["recipe"])
        recipe = recipe if recipe.is_absolute() else (base / recipe).resolve()
        if recipe.is_file():
            spec["training_args_file"] = str(recipe)
    defaults = PushArguments()
    for key in ("repo_id", "results_dir", "paper_reference", "training_args_file", "license", "base_model",
                "description", "card_path"):
        if key in spec and getattr(args, key) == getattr(defaults, key):
            setattr(args, key, spec[key])
    return args, spec


def build_card(args: PushArguments, spec: dict, model_config=None, plot_base: Path | None = None):
    """Render the card and list the files that go with it (plots, results). Plot links are file names (the files
    are staged next to the card) or, with ``plot_base``, paths relative to it (a card rendered in place)."""
    result, extra_files, plots = None, [], []
    if args.results_dir is not None:
        results_dir = Path(args.results_dir)
        if not (results_dir / "soup_results.json").is_file():
            raise SystemExit(f"{results_dir} has no soup_results.json: run scripts/evaluate_soups.py first.")
        result = SoupEvaluation.load_json(results_dir / "soup_results.json")
        extra_files = [results_dir / name for name in RESULT_FILES if (results_dir / name).is_file()]
        pngs = sorted(results_dir.glob("*.png"), key=lambda p: (not p.stem.startswith("tradeoff"), p.name))
        extra_files += pngs
        plots = [os.path.relpath(p, plot_base) if plot_base is not None else p.name for p in pngs]
    training_arguments = dict(spec["training_arguments"]) if spec.get("training_arguments") else None
    if args.training_args_file is not None:
        training_arguments = load_training_arguments(args.training_args_file)
    elif args.model_name_or_path is not None:
        for name in TRAINING_ARGS_CANDIDATES:
            if (Path(args.model_name_or_path) / name).is_file():
                training_arguments = load_training_arguments(Path(args.model_name_or_path) / name)
                break
    infos = (result.settings.get("datasets_info") if result is not None else None) or spec.get("datasets") or []
    datasets = [DatasetInfo(**{k: d.get(k) for k in ("name", "hub_id", "split", "config")}) for d in infos]
    training_datasets = list(spec.get("training_datasets", []))
    if training_arguments and not training_datasets and training_arguments.get("dataset_name"):
        training_datasets = [str(training_arguments["dataset_name"])]
    from hf_advsoup.data import DATASET_PRESETS

    training_datasets = [DATASET_PRESETS[d].hub_id if d in DATASET_PRESETS else d for d in training_datasets]
    inputs = CardInputs(
        model_name=args.repo_id or spec.get("model_name") or "advsoup-vit",
        repo_id=args.repo_id,
        license=args.license,
        base_model=args.base_model,
        datasets=datasets,
        training_datasets=[d for d in training_datasets if d],
        paper_reference=args.paper_reference,
        training_arguments=training_arguments,
        plots=plots,
        description=args.description,
    )
    if spec.get("training_arguments_source"):
        inputs.training_arguments_source = spec["training_arguments_source"]
    elif args.card_only and training_arguments:
        source = args.training_args_file or args.card_spec
        inputs.training_arguments_source = f"the configuration's recipe (`{_display_path(source)}`)"
    return render_model_card(inputs, result, model_config), extra_files, training_arguments


def _display_path(path: str) -> str:
    """``path`` relative to the working directory when it is below it (repository-relative in rendered cards)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> Path:
    """Stage (and unless ``--no_push``, upload) the model folder; return the staged folder (a temporary one is
    already deleted after an upload), or the card's path with ``--card_only``."""
    parser = HfArgumentParser(PushArguments)
    (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args, spec = _apply_spec(args)

    if args.card_only:
        if args.card_path is None:
            raise SystemExit("--card_only needs --card_path (or card_path in --card_spec).")
        check_output_file(args.card_path, flag="--card_path")
        card, _, _ = build_card(args, spec, plot_base=Path(args.card_path).resolve().parent)
        Path(args.card_path).parent.mkdir(parents=True, exist_ok=True)
        card.save(args.card_path)
        logger.info("Wrote the card %s", args.card_path)
        return Path(args.card_path)

    if args.folder is not None:
        return push_staged_folder(args)
    if args.model_name_or_path is None or args.repo_id is None:
        raise SystemExit("--model_name_or_path and --repo_id are required (or use --card_only).")
    temporary = args.output_dir is None
    if not temporary:  # the whole folder is uploaded: it must be new or empty
        check_output_dir(args.output_dir, must_be_empty=True)
    if not Path(args.model_name_or_path).is_dir():
        raise FileNotFoundError(f"--model_name_or_path {args.model_name_or_path}: no such folder (the co-trained "
                                "checkpoint folder to stage and upload).")
    if args.results_dir is not None and not (Path(args.results_dir) / "soup_results.json").is_file():
        raise SystemExit(f"{args.results_dir} has no soup_results.json: run scripts/evaluate_soups.py first.")
    api = None
    if not args.no_push:
        # Before anything is written or created: offline mode, a missing or rejected token, or no network stop here
        # (the staged folder holds the whole model).
        try:
            api = connect(args.token)
        except HubPushError as error:
            raise SystemExit(f"error: {error}") from error
    folder = Path(tempfile.mkdtemp(prefix="advsoup_hub_")) if temporary else Path(args.output_dir)
    keep = not temporary
    try:
        stage(args, spec, folder)
        if args.no_push:
            keep = True  # the staged folder is the result
            print(folder)
            return folder
        upload(folder, args, api)
        return folder
    finally:
        if not keep:  # a temporary folder holds a copy of the model: never leave it behind
            shutil.rmtree(folder, ignore_errors=True)


REMOTE_CODE = ("configuration_advsoup.py", "modeling_advsoup.py")


def upload(folder: Path, args: PushArguments, api) -> None:
    """Upload ``folder`` in one commit (``api`` from :func:`~hf_advsoup.hub.connect`); print the commit's URL."""
    try:
        commit = push_folder(folder, args.repo_id, private=args.private, revision=args.revision,
                             commit_message=args.commit_message, api=api)
    except HubPushError as error:
        raise SystemExit(f"error: {error}") from error
    print(getattr(commit, "commit_url", commit))


def push_staged_folder(args: PushArguments) -> Path:
    """``--folder``: check the folder (a card, a config, weights), add the remote code where it lacks it (in a
    temporary copy: the folder itself is not changed), and upload it as it is."""
    folder = Path(args.folder)
    if args.repo_id is None:
        raise SystemExit("--folder needs --repo_id (where to upload it).")
    if args.model_name_or_path is not None or args.results_dir is not None:
        raise SystemExit("--folder uploads a staged folder as it is: leave out --model_name_or_path and --results_dir.")
    missing = [name for name in ("README.md", "config.json", "model.safetensors") if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise SystemExit(f"error: {folder} is not a staged model folder (missing: {', '.join(missing) or 'the folder'}).")
    check_weight_files(str(folder))
    api = None
    if not args.no_push:
        try:
            api = connect(args.token)
        except HubPushError as error:
            raise SystemExit(f"error: {error}") from error
    staged, temporary = folder, None
    if not all((folder / name).is_file() for name in REMOTE_CODE):
        temporary = Path(tempfile.mkdtemp(prefix="advsoup_hub_"))
        staged = temporary / folder.name
        shutil.copytree(folder, staged)
        code = temporary / "code"
        AutoModelForImageClassification.from_pretrained(str(folder)).save_pretrained(code)  # writes the remote code
        for name in REMOTE_CODE:
            shutil.copy2(code / name, staged / name)
        logger.info("Added the installed package's remote code (%s) to the upload.", ", ".join(REMOTE_CODE))
    try:
        if args.no_push:
            print(folder)
            return folder
        upload(staged, args, api)
        return folder
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def stage(args: PushArguments, spec: dict, folder: Path) -> None:
    """Save the model, its image processor, the card, plots and results into ``folder``."""
    check_weight_files(args.model_name_or_path)  # a truncated weights file is named, not "incomplete metadata"
    model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path)
    try:
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    except (OSError, ValueError) as error:
        logger.warning("No image processor in %s (%s): the card's pipeline example needs one.",
                       args.model_name_or_path, error)
        processor = None
    card, extra_files, training_arguments = build_card(args, spec, model.config)
    stage_for_hub(folder, model=model, card=card, image_processor=processor, extra_files=extra_files,
                  training_arguments=training_arguments)
    logger.info("Staged %s: %s", folder, sorted(p.name for p in folder.iterdir()))


if __name__ == "__main__":
    run(main)
