"""What every script of ``scripts/`` shares: how a run ends on a user error or a Ctrl-C, and the check of its output
location before any work.

Each script keeps a ``main(argv)`` that raises as any Python function does (tests call it and catch the exception);
its ``if __name__ == "__main__":`` line is ``run(main)``, which turns

* a user error (a bad value, a missing file or data set, the Hub out of reach, an occupied output folder: the
  exceptions in :data:`USER_ERRORS`, and ``SystemExit("message")``) into one line ``error: <message>`` on stderr and
  exit code 2, like argparse's own errors;
* a Ctrl-C into one line ``interrupted: <what to do>`` and exit code 130 (the shell's code for SIGINT);
* anything else (a bug) into the usual traceback.

A bare ``--debug`` on the command line (``--debug VALUE`` stays the Trainer's option) or ``HF_ADVSOUP_DEBUG=1`` in the
environment shows the traceback of a user error too.

:func:`check_output_dir` is the one check of an output folder: it refuses a path that is a file, that sits below a
file or in a folder that cannot be written, and (when asked) a folder that is not empty, always with the same wording
("... Nothing was changed. Pass ..., or choose another --output_dir.").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = [
    "DEBUG_ENV",
    "USER_ERRORS",
    "Interrupted",
    "OutputLocationError",
    "check_output_dir",
    "describe_folder",
    "run",
]

DEBUG_ENV = "HF_ADVSOUP_DEBUG"
"""Environment variable: when true (``1``, ``true``, ``yes``), user errors show their traceback."""

EXIT_USER_ERROR = 2
"""Exit code of a user error (argparse uses 2 for bad command lines)."""
EXIT_INTERRUPTED = 130
"""Exit code of a Ctrl-C (128 + SIGINT)."""

RUN_FILES = ("run_args.json", "config.json", "model.safetensors", "adapter_model.safetensors", "trainer_state.json",
             "soup_results.json", "results.json", "transfer_config.json")
"""Files that mark a folder as holding the output of a run (named first when a folder is described)."""


class OutputLocationError(FileExistsError):
    """An output location that cannot be used as given (a file, below a file, not writable, or not empty); raised
    before anything is written."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that knows what the user can do next (``str(self)``: one line, e.g. how to resume)."""


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)
"""Exception types :func:`run` reports as one line: the library's validation errors (``ValueError``), missing or
occupied files and folders, data that cannot be loaded, the Hub out of reach (``OSError``: ``FileNotFoundError``,
``FileExistsError``, ``DatasetUnavailableError``, ``ConnectionError``), a missing optional package (``ImportError``),
a malformed YAML recipe; plus, when their modules are loaded, ``NonFiniteLossError``, ``HubPushError`` and the study's
``JobError``."""


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = list(USER_ERRORS)
    try:
        import yaml

        errors.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        pass
    # The library's own errors that are not ValueError/OSError: a diverged run, a refused push, a failed study job.
    for module, name in (("hf_advsoup.trainer", "NonFiniteLossError"), ("hf_advsoup.hub", "HubPushError"),
                         ("hf_advsoup.study.jobs", "JobError")):
        error = getattr(sys.modules.get(module), name, None)
        if error is not None:
            errors.append(error)
    return tuple(errors)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether ``HF_ADVSOUP_DEBUG`` is true or ``argv`` holds a bare ``--debug``."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return argv is not None and len(strip_debug_flag(argv)) != len(argv)


def strip_debug_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without a bare ``--debug`` (one followed by nothing or by another ``-`` flag). ``--debug VALUE`` is
    left alone: it is ``TrainingArguments``' own option (e.g. ``--debug underflow_overflow``)."""
    kept = []
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--debug" and (following is None or following.startswith("-")):
            continue
        kept.append(arg)
    return kept


def one_line(error: BaseException | str) -> str:
    """The message of ``error`` on one line (line breaks and runs of spaces become one space)."""
    text = str(error) if not isinstance(error, str) else error
    if isinstance(error, KeyError) and error.args:  # str(KeyError) quotes its message
        text = str(error.args[0])
    text = " ".join(text.split())
    if not text and not isinstance(error, str):
        text = type(error).__name__
    return text


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *,
        interrupt_hint: str | Callable[[list[str]], str] | None = None) -> NoReturn:
    """Run a script's ``main(argv)`` as a command: exit 0 when it returns, 2 with one line ``error: ...`` on a user
    error (:data:`USER_ERRORS` or ``SystemExit("message")``), 130 with one line ``interrupted: ...`` on Ctrl-C.

    Args:
        main: the script's ``main``; it receives ``argv`` without a bare ``--debug``.
        argv: the command line (default ``sys.argv[1:]``).
        interrupt_hint: what to tell the user after a Ctrl-C when the exception is not an :class:`Interrupted` that
            says it itself (a string, or a function of the command line).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = strip_debug_flag(argv)
    try:
        main(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, str) and not debug:
            message = one_line(exit_.code)
            _fail(message.removeprefix("error: "))
        raise
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        hint = str(interrupt) if isinstance(interrupt, Interrupted) and str(interrupt) else None
        if hint is None and interrupt_hint is not None:
            hint = interrupt_hint(argv) if callable(interrupt_hint) else interrupt_hint
        print(f"interrupted: {one_line(hint or 'stopped by Ctrl-C.')}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except _user_errors() as error:
        if debug:
            raise
        _fail(one_line(error))
    sys.exit(0)


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


# --------------------------------------------------------------------------------------------------- output folders
def describe_folder(entries: Sequence[str], *, limit: int = 8) -> str:
    """``"another run: run_args.json, checkpoint-3 (12 entries in all)"`` or ``"other files: a, b (2 entries in
    all)"``: what a folder holding ``entries`` (visible names) holds, run files and checkpoints first."""
    run_files = [name for name in RUN_FILES if name in entries]
    run_files += sorted((name for name in entries if name.startswith("checkpoint-") and name[11:].isdigit()),
                        key=lambda name: int(name[11:]))
    shown = run_files or sorted(entries)
    return (f"{'another run' if run_files else 'other files'}: {', '.join(shown[:limit])}"
            f"{', ...' if len(shown) > limit else ''} ({len(entries)} entries in all)")


def check_output_dir(path: str | os.PathLike, *, flag: str = "--output_dir", must_be_empty: bool = False,
                     ways_out: Sequence[str] = ()) -> list[str]:
    """Refuse an output folder that cannot be used, before any work; return its visible entries (``[]`` when it
    does not exist yet). Nothing is created or written.

    Refused, with :class:`OutputLocationError` (a ``FileExistsError``) naming ``flag``, the path and what to do:
    a path that is a file; a path below a file; a path whose nearest existing folder cannot be written; with
    ``must_be_empty``, a folder with visible entries (hidden files such as ``.gitignore`` do not count), described
    by :func:`describe_folder`. ``ways_out`` are the flags that would allow it (``"--overwrite_output_dir to replace
    it"``): the message lists them before "or choose another ``flag``".
    """
    text = os.fspath(path)
    if not text:
        raise OutputLocationError(f"{flag} is empty: give the folder to write into.")
    location = os.path.abspath(os.path.expanduser(text))
    if os.path.exists(location) and not os.path.isdir(location):
        raise OutputLocationError(f"{flag} {text} is a file, not a folder. Nothing was changed. Choose another {flag}.")
    existing = location
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputLocationError(f"{flag} {text} cannot be created: {existing} is a file, not a folder. Nothing was "
                                  f"changed. Choose another {flag}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputLocationError(f"{flag} {text} cannot be written: {existing} is not writable. Nothing was changed. "
                                  f"Choose another {flag}.")
    entries = sorted(name for name in os.listdir(location) if not name.startswith(".")) \
        if os.path.isdir(location) else []
    if must_be_empty and entries:
        ways = ", ".join(ways_out)
        raise OutputLocationError(
            f"{flag} {text} is not empty: it holds {describe_folder(entries)}. Nothing was changed. "
            + (f"Pass {ways}, or choose another {flag}." if ways else f"Give a new or empty {flag}.")
        )
    return entries


def check_output_file(path: str | os.PathLike, *, flag: str) -> None:
    """Refuse an output *file* path that cannot be written (a folder, below a file, not writable) before any work,
    with :func:`check_output_dir`'s wording."""
    text = os.fspath(path)
    location = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(location):
        raise OutputLocationError(f"{flag} {text} is a folder, not a file. Nothing was changed. Choose another {flag}.")
    check_output_dir(os.path.dirname(location), flag=f"the folder of {flag}")


RESUME_HINT = ("run the same command again to continue: finished jobs are reused, an interrupted training resumes "
               "from its last checkpoint.")
"""The Ctrl-C hint of the job-running scripts (``scripts/flagship.py``, ``scripts/reproduce.py``)."""


def check_job_locations(args: Any) -> None:
    """Before any work of a job-running script: its ``--output_dir`` and ``--work_dir`` (when given) can be written
    (a run resumes in them, so they may hold files), and a given ``--cotrain_script`` exists."""
    for flag in ("output_dir", "work_dir"):
        if getattr(args, flag) is not None:
            check_output_dir(getattr(args, flag), flag=f"--{flag}")
    if args.cotrain_script is not None and not os.path.isfile(args.cotrain_script):
        raise FileNotFoundError(f"--cotrain_script {args.cotrain_script}: no such file.")
