"""Warnings about answers that hint at a misconfigured server, each given once per process.

- **Another model answered.** The server names, in each answer, the model that answered; when
  it is not the model asked for (nor a dated or tagged form of it, as ``gpt-4o-mini-2024-07-18``
  is of ``gpt-4o-mini``), the server ignored the name: a local server serves what it loaded.
- **A chat template's end marker in the text.** An answer holding ``<|im_end|>``,
  ``<end_of_turn>`` or ``</s>`` (or ``<|eot_id|>``, ``<|endoftext|>``) was made with a chat
  template that is not the model's own, so the model never sent the stop the server waits for;
  the fix is the server's chat template (llama-server: ``--chat-template NAME`` or ``--jinja``).

Each is logged once per process (a run) for each base URL and model (or marker), at WARNING,
on the logger of the call that met it first.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["TEMPLATE_MARKERS", "forget_notices", "notice_answer"]

TEMPLATE_MARKERS = ("<|im_end|>", "<end_of_turn>", "</s>", "<|eot_id|>", "<|endoftext|>")
"""End markers of common chat templates that never belong in an answer's text."""

_given: set[tuple[str, ...]] = set()
_lock = threading.Lock()


def forget_notices() -> None:
    """Forget which warnings were given (a new run, or a test)."""
    with _lock:
        _given.clear()


def _first_time(key: tuple[str, ...]) -> bool:
    with _lock:
        if key in _given:
            return False
        _given.add(key)
        return True


def model_differs(asked: str, answered: str | None) -> bool:
    """True when ``answered`` is another model than ``asked``, not a dated or tagged form of it."""
    if not answered or not asked:
        return False
    a, b = asked.lower(), answered.lower()
    return not (a == b or b.startswith(a) or a.startswith(b))


def notice_answer(
    label: str, base_url: str, asked: str, answered: str | None, text: str, logger: Any
) -> None:
    """Warn (once each) when another model answered or the text holds a template's end marker.

    Args:
        label: The call (``agent:item``), named in the warning.
        base_url: The server that answered.
        asked: The model the request named.
        answered: The model the answer names (None when it names none).
        text: The answer's text.
        logger: Where the warning goes.
    """
    if model_differs(asked, answered) and _first_time(("model", base_url, asked, str(answered))):
        logger.warning(
            "[%s] asked for model %r but %s answered with %r: the server does not serve the "
            "model named and used its own; name the served model (--model, the agent's model, "
            "the endpoint's default_model) or leave it unset to use the one the server lists. "
            "Said once per run.",
            label,
            asked,
            base_url,
            answered,
        )
    for marker in TEMPLATE_MARKERS:
        if marker in text and _first_time(("marker", base_url, marker)):
            logger.warning(
                "[%s] the answer holds %r, a chat template's end marker: the server formats "
                "prompts with a chat template that is not the model's own, so the model's stop "
                "was not recognised. Set the server's chat template (llama-server: "
                "--chat-template NAME, e.g. gemma or chatml, or --jinja). Said once per run.",
                label,
                marker,
            )
