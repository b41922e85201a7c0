"""Whether the Hugging Face Hub can be reached, decided once and quickly.

Without a network, `from_pretrained` and `load_dataset` retry with back-off for 30-60 s per file before they give
up, printing a line per retry. lorabudget asks once: HF_HUB_OFFLINE set means no; otherwise one TCP connection to
the Hub's endpoint (HF_ENDPOINT) with a short timeout. When the answer is no, loads go to the local cache only
(`local_files_only`), and fail at once with lorabudget's own message when the cache lacks the files. Behind an
HTTP(S) proxy a direct connection says nothing, so no probe is made and the libraries decide as usual.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}
_answer: tuple[bool, str] | None = None


def _proxied() -> bool:
    return any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                           "all_proxy"))


def hub_status() -> tuple[bool, str]:
    """(reachable, why not): decided on the first call, then remembered for the process."""
    global _answer
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return False, "HF_HUB_OFFLINE is set"
    if _answer is None:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        host = endpoint.hostname or "huggingface.co"
        port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
        if _proxied():
            _answer = (True, "")
        else:
            try:
                socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
                _answer = (True, "")
            except OSError as exc:
                _answer = (False, f"{host}:{port} cannot be reached: {exc.strerror or exc}")
    return _answer


def local_files_only() -> bool:
    """What to pass as `local_files_only` to transformers' and datasets' loaders."""
    return not hub_status()[0]


def offline_hint() -> str:
    reachable, why = hub_status()
    return "" if reachable else f" The Hugging Face Hub is out of reach ({why}), so only the local cache was read."
