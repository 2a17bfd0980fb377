"""Gist ids and URLs, parsed without the network or torch (the config checks gist_id with this)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Optional

_HEX = re.compile(r"[0-9a-fA-F]+")
_USER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class GistRef:
    gist_id: str
    user: Optional[str] = None


def parse_gist_ref(text: str) -> GistRef:
    """A Gist id, user/id, or any Gist URL (page, raw file, .git clone URL) -> GistRef; ValueError otherwise."""
    raw = text.strip()
    path = raw
    if "://" in raw or raw.split("/")[0].count("."):  # a URL, with or without its scheme
        path = urllib.parse.urlsplit(raw if "://" in raw else "https://" + raw).path
    parts = [p for p in path.split("/") if p]
    if "raw" in parts:
        parts = parts[:parts.index("raw")]  # .../{user}/{id}/raw/[{revision}/]{file}
    if parts and parts[-1].endswith(".git"):
        parts[-1] = parts[-1][:-4]
    gist_id = parts[-1] if parts else ""
    user = parts[-2] if len(parts) >= 2 else None
    if not _HEX.fullmatch(gist_id) or len(parts) > 2 or (user is not None and not _USER.fullmatch(user)):
        raise ValueError(f"{text!r} is not a Gist id or URL; paste the id (the hex string, e.g. "
                         "'aa5a315d61ae9438b18d') or the Gist's URL (https://gist.github.com/USER/ID).")
    return GistRef(gist_id, user)
