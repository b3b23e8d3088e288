"""What must never leave this machine in a card, a config or an upload: the Hub token and local absolute paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential")
_NOT_SECRET = ("tokenizer", "tokenizer_path", "tokenizer_dir", "max_tokens")
# An absolute POSIX path of two or more parts, not the path part of a URL ("https://host/a/b").
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+[\w.@+-]*")


def is_secret_name(name: str) -> bool:
    """True for an option name that may hold a secret (``hub_token``, ``api_key``; not ``tokenizer``)."""
    lowered = name.lower()
    return lowered not in _NOT_SECRET and any(word in lowered for word in _SECRET_WORDS)


def known_tokens(extra: str | None = None) -> list[str]:
    """The Hub tokens this process knows of: ``extra`` and the usual environment variables."""
    tokens = [extra] if extra else []
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        if os.environ.get(name):
            tokens.append(os.environ[name])
    return [t for t in tokens if len(t) >= 4]


def redact(text: str, token: str | None = None) -> str:
    """``text`` with every known token replaced by ``<redacted>``."""
    for secret in known_tokens(token):
        text = text.replace(secret, "<redacted>")
    return text


def local_paths(text: str) -> list[str]:
    """The absolute paths in ``text`` that point into this machine's file system (their top two folders exist
    here), e.g. ``/srv/alice/notes.txt``, also as a ``file:///srv/alice/notes.txt`` URL; ``/abc/def`` that exists
    nowhere here is not reported."""
    found = []
    for match in _ABSOLUTE_PATH.finditer(text.replace("file://", "file: ")):  # a file URL's path is a local path
        parts = Path(match.group(0)).parts  # ("/", "home", "alice", ...)
        if len(parts) >= 3 and Path(*parts[:3]).exists() and match.group(0) not in found:
            found.append(match.group(0))
    return found
