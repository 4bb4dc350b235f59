"""The prompt of one corpus item: its text, its record as JSON, or a `--prompt` template.

A template names record fields in braces, ``"Summarise {title}: {body}"``;
nested fields use ``{meta[source]}``. ``{input}`` is the item's default prompt
(its text, or the record as JSON) and ``{id}`` its id. Strings are inserted as
they are, other values as JSON. Literal braces are doubled: ``{{`` and ``}}``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prefect_fanout.errors import TemplateFieldError
from prefect_fanout.mapping.corpus import Item

__all__ = ["TemplateFieldError", "check_template", "item_prompt", "template_values"]


class _JsonFormatter(string.Formatter):
    """str.format that writes non-string values as JSON and rejects positional fields."""

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int):
            raise TemplateFieldError(
                "--prompt: the template has a positional field '{}' or '{" + str(key) + "}'; "
                "name a record field instead, e.g. {text}"
            )
        return kwargs[key]

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, str) and not format_spec:
            return value
        if isinstance(value, dict | list | bool) or value is None:
            value = json.dumps(value, sort_keys=True, ensure_ascii=False)
        return super().format_field(value, format_spec)


_FORMATTER = _JsonFormatter()


def template_values(item: Item) -> dict[str, Any]:
    """The names a template may use for an item: its record, plus ``id`` and ``input``."""
    values = dict(item.record)
    values.setdefault("id", item.id)
    values["input"] = item.prompt_text()
    return values


def item_prompt(item: Item, template: str | None = None) -> str:
    """The prompt for one item.

    Args:
        item: The corpus item.
        template: A ``--prompt`` template, or None for the item's own text
            (or its record as JSON when it has no text).

    Returns:
        The prompt text.

    Raises:
        TemplateFieldError: The template names a field the item lacks, or is
            malformed; the message names the field and the item.

    """
    if template is None:
        return item.prompt_text()
    values = template_values(item)
    try:
        return _FORMATTER.vformat(template, (), values)
    except KeyError as exc:
        field = exc.args[0] if exc.args else "?"
        have = ", ".join(sorted(values)) or "none"
        raise TemplateFieldError(
            f"--prompt: item {item.id!r} (input #{item.index + 1}) has no field {field!r} "
            f"named by the template (its fields: {have})"
        ) from None
    except (IndexError, TypeError) as exc:
        raise TemplateFieldError(
            f"--prompt: cannot render the template for item {item.id!r}: {exc}"
        ) from None
    except ValueError as exc:
        raise TemplateFieldError(f"--prompt: malformed template {template!r}: {exc}") from None


def check_template(items: Iterable[Item], template: str | None) -> None:
    """Render the template for every item, so a missing field fails before any call.

    Raises:
        TemplateFieldError: For the first item the template cannot render.

    """
    if template is None:
        return
    for item in items:
        item_prompt(item, template)
