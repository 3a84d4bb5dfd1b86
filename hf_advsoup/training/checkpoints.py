"""Checkpoint folders of a co-training run: finding the one to resume from and checking its weight files.

:func:`resolve_checkpoint` turns ``--resume_from_checkpoint`` (a folder, ``latest``/``true``) into a folder, skipping a
``checkpoint-N`` that an interrupted save left without ``trainer_state.json``; :func:`check_weight_files` names a
truncated or corrupt ``*.safetensors`` file wherever a checkpoint is read (the trainer, ``scripts/cotrain.py``,
``scripts/push_to_hub.py``, transfer).
"""

from __future__ import annotations

import logging
import os

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)


class CorruptCheckpointError(OSError):
    """A weights file (``*.safetensors``) of a checkpoint cannot be read: truncated (an interrupted copy or save, a
    full disk) or not a safetensors file."""


LATEST_CHECKPOINT_VALUES = ("true", "latest")
"""``resume_from_checkpoint`` values (case-insensitive; also the boolean ``True``) meaning the last complete
``checkpoint-N`` folder of ``output_dir``."""


def check_weight_files(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptCheckpointError` naming the first ``*.safetensors`` file of the local folder ``path``
    (or the file ``path``) that is truncated or corrupt. Reads only the headers (and the file sizes). A Hub id or
    a missing path is left to the loader."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(".safetensors"))
    else:
        files = [path] if os.path.isfile(path) else []
    for file in files:
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError as error:
            raise CorruptCheckpointError(
                f"{file} is truncated or corrupt ({os.path.getsize(file):,} bytes; safetensors: {error}). It was "
                "probably cut short by an interrupted save or copy, or a full disk: copy it again, or use an earlier "
                "checkpoint."
            ) from error


def _is_complete_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME))


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder ``resume_from_checkpoint`` designates, or ``None`` for a fresh start.

    ``None``, ``False`` or ``"false"``/``"none"``/``""``: no resume. ``True`` or ``"true"``/``"latest"``
    (command-line spellings): the ``checkpoint-N`` folder of ``output_dir`` with the largest ``N`` that holds
    ``trainer_state.json`` (written last by a save; a folder without it was interrupted while saving and is
    skipped with a warning). Anything else: a checkpoint folder, which must exist.

    Raises:
        FileNotFoundError: naming the folder, when there is no checkpoint to resume from.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    text = str(resume_from_checkpoint).strip()
    if text.lower() in ("false", "none", ""):
        return None
    if resume_from_checkpoint is True or text.lower() in LATEST_CHECKPOINT_VALUES:
        found = []
        if os.path.isdir(output_dir):
            for name in os.listdir(output_dir):
                prefix, _, number = name.partition("-")
                folder = os.path.join(output_dir, name)
                if prefix == PREFIX_CHECKPOINT_DIR and number.isdigit() and os.path.isdir(folder):
                    found.append((int(number), folder))
        complete = [(step, folder) for step, folder in sorted(found) if _is_complete_checkpoint(folder)]
        if not complete:
            raise FileNotFoundError(
                f"resume_from_checkpoint={text!r} means the latest checkpoint of output_dir, but {output_dir} holds no "
                f"{PREFIX_CHECKPOINT_DIR}-N folder with a {TRAINER_STATE_NAME}"
                + (f" (incomplete: {', '.join(os.path.basename(f) for _, f in found)})" if found else "")
                + ". Start without --resume_from_checkpoint, or give a checkpoint folder."
            )
        step, folder = complete[-1]
        skipped = [os.path.basename(f) for n, f in found if n > step]
        if skipped:
            logger.warning("Skipping %s (no %s: interrupted while saving).", ", ".join(skipped), TRAINER_STATE_NAME)
        logger.info("Resuming from the latest checkpoint, %s.", folder)
        return folder
    if not os.path.isdir(text):
        raise FileNotFoundError(
            f"resume_from_checkpoint={text!r} is not a folder. Give a checkpoint folder ({output_dir}/"
            f"{PREFIX_CHECKPOINT_DIR}-N) or 'latest' for the last one in output_dir."
        )
    return text


__all__ = [
    "CorruptCheckpointError",
    "LATEST_CHECKPOINT_VALUES",
    "check_weight_files",
    "resolve_checkpoint",
]
