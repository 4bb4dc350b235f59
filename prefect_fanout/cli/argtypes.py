"""Shared by the ``fanout`` commands: numbers with a lower bound, one-line error text."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(kind: type[int] | type[float], minimum: float) -> Callable[[str], int | float]:
    """An argparse ``type`` that parses ``kind`` and rejects values below ``minimum``.

    Args:
        kind: ``int`` or ``float``.
        minimum: The smallest accepted value.

    Returns:
        The converter; its errors name the expected form and the bound.
    """
    expected = "a whole number" if kind is int else "a number"

    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {value}")
        return value

    convert.__name__ = f"{kind.__name__}>={minimum:g}"
    return convert


def positive_float(text: str) -> float:
    """An argparse ``type``: a number greater than 0."""
    value = at_least(float, 0.0)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return float(value)


def one_line(text: str, limit: int = 500) -> str:
    """An error message as one bounded line: inputs are never dumped to stderr."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


positive_int = at_least(int, 1)
non_negative_int = at_least(int, 0)
non_negative_float = at_least(float, 0.0)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-tokens`` and ``--temperature`` (overriding every agent's) to a command."""
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        metavar="N",
        help="completion budget overriding every agent's (built-in agents: 1024)",
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        metavar="T",
        help="sampling temperature overriding every agent's",
    )
