"""Reaching the Hugging Face Hub: whether it answers, and failing fast when it does not.

Without a network, ``datasets.load_dataset("user/name")`` and ``from_pretrained("user/name")`` retry for about 25 s
each before they fail, with a chained traceback; with ``HF_HUB_OFFLINE=1`` they fail at once. So before a Hub id is
loaded, :func:`hub_unreachable_reason` asks the Hub once per process (one ``HEAD`` request, :data:`PROBE_TIMEOUT`
seconds at most; proxies from the environment apply): when it does not answer, :func:`go_offline` turns the Hub
client's offline mode on for the rest of the process, so that data and models in the local cache still load and
anything else fails at once with the library's own message (:func:`check_model_source`,
:class:`~hf_advsoup.data.DatasetUnavailableError`).
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

__all__ = ["PROBE_TIMEOUT", "check_model_source", "go_offline", "hub_unreachable_reason", "offline_mode"]

PROBE_TIMEOUT = 4.0
"""Seconds the reachability probe waits for the Hub (name resolution included)."""

_probe_result: dict[str, str | None] = {}


def offline_mode() -> bool:
    """Whether the Hub client is in offline mode (``HF_HUB_OFFLINE=1``/``TRANSFORMERS_OFFLINE=1``, or
    :func:`go_offline` was called)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _probe_hub(timeout: float) -> str | None:
    """``None`` when the Hub endpoint answers within ``timeout`` seconds (any HTTP status), else why not."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    outcome: dict[str, str | None] = {"reason": f"no answer from {constants.ENDPOINT} within {timeout:g} s"}

    def ask() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout)
            outcome["reason"] = None
        except Exception as error:  # any failure to connect means "unreachable"; the reason is reported
            outcome["reason"] = f"{constants.ENDPOINT} cannot be reached ({type(error).__name__}: {error})"

    # A thread bounds the whole probe: name resolution has no timeout of its own.
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome["reason"]


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT) -> str | None:
    """``None`` when the Hub can be used, else why not: offline mode is on, or the Hub did not answer (asked once per
    process; the answer is remembered)."""
    if offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if "reason" not in _probe_result:
        _probe_result["reason"] = _probe_hub(timeout)
    return _probe_result["reason"]


def go_offline(reason: str) -> None:
    """Turn the Hub client's offline mode on for the rest of this process (``huggingface_hub``, ``datasets`` and
    transformers read it at each call), and for the processes it starts, saying why (once)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    logger.warning("The Hugging Face Hub cannot be used (%s): continuing offline, with local files and the cache "
                   "only.", reason)
    constants.HF_HUB_OFFLINE = True
    try:
        import datasets

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"


def check_hub_or_go_offline() -> str | None:
    """Before a Hub id is loaded: ``None`` when the Hub answers; otherwise switch to offline mode
    (:func:`go_offline`) and return why, so that the load that follows uses the cache or fails at once."""
    reason = hub_unreachable_reason()
    if reason is not None:
        go_offline(reason)
    return reason


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.endswith(("/", os.sep))
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def check_model_source(name_or_path: str | None, *, flag: str = "--model_name_or_path",
                       revision: str | None = None) -> None:
    """Check a model argument before any work: a local folder must exist and hold a ``config.json``; a Hub id needs
    the Hub or a copy in the local cache. Without either, fail at once (instead of ~25 s of retries) naming the flag.

    Raises:
        FileNotFoundError: a path that does not exist or holds no ``config.json``; a Hub id that is neither reachable
            nor cached (the message says why the Hub cannot be used).
    """
    if not name_or_path:
        return
    local = os.path.expanduser(name_or_path)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise FileNotFoundError(f"{flag} {name_or_path} is a folder without config.json: not a saved model (give "
                                    "the folder that save_pretrained or a training run wrote).")
        return
    if os.path.exists(local):
        raise FileNotFoundError(f"{flag} {name_or_path} is a file: give the folder of a saved model or a Hub id.")
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(f"{flag} {name_or_path}: no such folder (resolved to {os.path.abspath(local)}).")
    reason = check_hub_or_go_offline()
    if reason is None:
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    if not isinstance(cached, str):
        raise FileNotFoundError(
            f"{flag} {name_or_path} is not a local folder, so it was taken as a Hub id, but the Hub cannot be used "
            f"({reason}) and the model is not in the local cache. Check the path or the network, or pass a local "
            "folder."
        )
