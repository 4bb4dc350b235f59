r"""Text that cannot be sent: lone surrogates, and empty prompts.

JSON allows ``"\ud800"`` (a lone UTF-16 surrogate) and Python decodes it to a
``str`` that cannot be encoded as UTF-8, so it can neither be hashed into a
cache key nor sent to a server. Such text is found before any call, with its
location (file and line for a corpus, the field path for a plan), or replaced
as undecodable bytes are (``--errors replace``: U+FFFD; ``ignore``: dropped).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["clean_text", "prompt_problem", "unencodable"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_at(text: str) -> int | None:
    match = _SURROGATE.search(text)
    return match.start() if match else None


def unencodable(value: Any, location: str = "") -> list[tuple[str, str]]:
    r"""Where ``value`` holds text that cannot be encoded as UTF-8.

    Returns:
        ``(location, detail)`` pairs in order, e.g. ``("tasks[0].description",
        "character 5 is \ud800")``.
    """
    found: list[tuple[str, str]] = []
    if isinstance(value, str):
        at = _bad_at(value)
        if at is not None:
            escaped = value[at].encode("unicode_escape").decode()
            found.append((location, f"character {at + 1} is {escaped}"))
    elif isinstance(value, dict):
        for key, inner in value.items():
            name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
            if isinstance(key, str) and _bad_at(key) is not None:
                found.append((location, f"the key {name!r}"))
            found.extend(unencodable(inner, f"{location}.{name}" if location else name))
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            found.extend(unencodable(inner, f"{location}[{index}]"))
    return found


def clean_text(value: Any, errors: str) -> Any:
    """``value`` with unencodable characters replaced (``replace``) or dropped (``ignore``)."""
    replacement = "\ufffd" if errors == "replace" else ""
    if isinstance(value, str):
        return _SURROGATE.sub(replacement, value)
    if isinstance(value, dict):
        return {clean_text(k, errors): clean_text(v, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v, errors) for v in value]
    return value


def prompt_problem(prompt: str) -> str | None:
    """Why a prompt cannot be sent (empty, or unencodable text), or None when it can."""
    if not prompt.strip():
        return "the prompt is empty; give the text to ask (or pipe it to '-')"
    bad = unencodable(prompt)
    if bad:
        return f"the prompt cannot be encoded as UTF-8 ({bad[0][1]}, a lone surrogate)"
    return None
