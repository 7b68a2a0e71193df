"""Getting pretrained weights: the error every family raises, the offline message, and the file cache.

Weights are downloaded on first use into the standard caches: files into torch hub's
``$TORCH_HOME/hub/checkpoints/`` (ImageNet, PANNs), Hugging Face models into ``huggingface_hub``'s
``HF_HUB_CACHE``. Offline, a connection probe with a short timeout fails at once instead of waiting on retries.
"""
from __future__ import annotations

import os
import socket
from urllib.error import URLError
from urllib.parse import urlparse

import torch

# A proxy decides reachability itself; a direct probe would wrongly report it offline.
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be downloaded or loaded; the message says where to put them."""


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host (port 443 for https, else 80) opens within ``timeout`` seconds.

    False at once when the host name does not resolve (no network); True without probing when an HTTPS proxy
    is configured (``HTTPS_PROXY``/``ALL_PROXY``).
    """
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return True
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_message(what: str, err: BaseException, source: str, folder: str, cache_hint: str,
                    weights_hint: str) -> str:
    """The message of a :class:`PretrainedWeightsError`: what failed and why, where the weights come from and the
    folder they are expected in, then the three ways out (copy them there, ``--weights=PATH``,
    ``--pretrained=False``)."""
    return (f"could not get {what} ({type(err).__name__}: {err}).\n"
            f"  {source}\n"
            f"  into {folder}\n"
            f"  Offline: copy it there ({cache_hint}), or pass --weights=PATH ({weights_hint}),\n"
            f"  or train from scratch with --pretrained=False.")


def key_list(keys, limit: int = 12) -> str:
    """Sorted ``keys`` for an error message: all of them, or the first ``limit`` and how many more."""
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"


def in_modules(key: str, modules: tuple[str, ...]) -> bool:
    """Whether a parameter or state-dict ``key`` (``fc.weight``) belongs to one of ``modules`` (dotted module
    names, e.g. a backbone's head ``("fc",)``): the name itself or anything under it, never a mere prefix
    (``fc1.weight`` is not under ``fc``)."""
    return any(key == m or key.startswith(m + ".") for m in modules)


def hub_file(file_name: str) -> str:
    """Where torch hub caches a downloaded weights file: ``$TORCH_HOME/hub/checkpoints/<file_name>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def download_file(url: str, file_name: str) -> str:
    """The cached copy of ``url`` (:func:`hub_file`), downloaded first when missing; returns its path.

    The download goes to a temporary file that is renamed when complete (``torch.hub.download_url_to_file``),
    so an interrupted download leaves nothing behind.
    Raises URLError (no connection, checked first with :func:`reachable`) or what the download raises.
    """
    path = hub_file(file_name)
    if os.path.exists(path):
        return path
    if not reachable(url):
        raise URLError(f"no connection to {urlparse(url).hostname}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.hub.download_url_to_file(url, path, progress=True)
    return path
