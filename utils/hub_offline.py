"""Whether a Hugging Face Hub name can be loaded here, answered in seconds (utils.hub uploads exports).

Without a network, transformers' from_pretrained retries the Hub for about a minute, printing a
"Retrying in Ns" line each time, before it fails. The kit asks first: a name already in the local
Hugging Face cache loads from there when the Hub cannot be reached (or HF_HUB_OFFLINE is set); one
that is not cached is refused at once with one line saying what to give instead.
"""

from __future__ import annotations

import socket
import urllib.parse

from utils.errors import KitError

CONNECT_TIMEOUT_S = 5.0  # one TCP connect to the Hub; an offline machine refuses at once, a dead route times out


class HubUnreachableError(KitError, ValueError):
    """A Hub name that is not cached here while the Hub cannot be reached (or HF_HUB_OFFLINE is set)."""


def cached_only(name: str, setting: str) -> bool:
    """True when `name` must load from the local cache (local_files_only); False when the Hub answers.
    setting: the config field that named it, for the message (e.g. "pretrained_model")."""
    from huggingface_hub import constants

    cached = _is_cached(name)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return True
        raise HubUnreachableError(f"{setting}={name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                                  "set; unset it to download, or give a local folder saved with save_pretrained")
    reason = _unreachable(constants.ENDPOINT)
    if reason is None:
        return False
    if cached:
        print(f"The Hugging Face Hub cannot be reached ({reason}); loading {name!r} from the local cache.")
        return True
    raise HubUnreachableError(f"{setting}={name!r} needs the Hugging Face Hub, which cannot be reached from here "
                              f"({constants.ENDPOINT}: {reason}) and it is not in the local cache; check the internet "
                              "connection (on Colab, the runtime's), or give a local folder saved with "
                              "save_pretrained")


def _is_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(name, filename), str)
                   for filename in ("config.json", "tokenizer_config.json"))
    except ValueError:  # not a valid repo id (HFValidationError): nothing of that name can be cached
        return False


def _unreachable(endpoint: str) -> str | None:
    """Why one TCP connect to the endpoint failed, or None when it connected."""
    parts = urllib.parse.urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as e:  # refused, no route, DNS failure (socket.gaierror) or a timeout
        return e.strerror or type(e).__name__
