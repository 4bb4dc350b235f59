"""``--rpm``, ``--tpm`` and ``--max-concurrency``: endpoint limits from the command line.

They override the endpoint block's limits (and a plan's ``config``) for the run;
see :mod:`prefect_fanout.limits`. A zero or negative value exits 2 before any call.
"""

from __future__ import annotations

import argparse


def positive_limit(text: str) -> int:
    """An argparse ``type``: a whole number greater than 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number greater than 0, got {text!r}; leave the flag out for no limit"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be greater than 0, got {value}; give a positive number, or leave the flag "
            "out for no limit"
        )
    return value


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the endpoint limit options to a command's parser."""
    parser.add_argument(
        "--rpm",
        type=positive_limit,
        metavar="N",
        help="requests per minute to the endpoint, spread evenly, across every process "
        "sharing the Prefect server (overrides the endpoint's requests_per_minute)",
    )
    parser.add_argument(
        "--tpm",
        type=positive_limit,
        metavar="N",
        help="tokens per minute to the endpoint (estimated before each request, corrected "
        "after; overrides the endpoint's tokens_per_minute)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=positive_limit,
        metavar="N",
        help="requests in flight at once to the endpoint across processes (overrides the "
        "endpoint's max_concurrency)",
    )
