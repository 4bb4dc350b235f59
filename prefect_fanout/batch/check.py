"""Batch mode's input checks, made before anything is uploaded (the CLI exits 2).

Refused: ``--batch`` with the offline ``test`` model (it has no Batch API: run it without
``--batch``); an endpoint with no Batch API (``GET /v1/files`` or ``GET /v1/batches``
answers 404, or another error: the message names the endpoint and suggests running without
``--batch``); options the Batch API does not take (``stream`` in an agent's ``extra_body``);
and the ``batch_*`` options without ``batch``.
"""

from __future__ import annotations

from collections.abc import Iterable

import openai

from prefect_fanout.batch.api import BatchAPI
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.testmodel import is_offline
from prefect_fanout.options import RunOptions

__all__ = ["check_batch_options", "check_batch_requests", "check_batch_endpoint"]

BATCH_ONLY = ("batch_wait", "batch_max_tokens", "batch_max_requests", "batch_poll_seconds")
REFUSED_BODY_FIELDS = ("stream", "stream_options")


def check_batch_options(options: RunOptions) -> bool:
    """True when the options ask for batch mode.

    Raises:
        ConfigurationError: A ``batch_*`` option is set without ``batch``.
    """
    if options.batch:
        return True
    stray = [name for name in BATCH_ONLY if getattr(options, name) is not None]
    if stray:
        flags = ", ".join("--" + name.replace("_", "-") for name in stray)
        raise ConfigurationError(f"{flags} take effect only with --batch (batch: true)")
    return False


def check_batch_requests(requests: Iterable[CallRequest]) -> None:
    """Refuse calls the Batch API cannot take.

    Raises:
        ConfigurationError: The offline ``test`` model, or a refused request field.
    """
    for request in requests:
        if is_offline(request.base_url):
            raise ConfigurationError(
                f"--batch: the model of agent {request.agent!r} is the offline 'test' model, "
                "which has no Batch API; run without --batch (it answers at once, free)"
            )
        refused = [name for name in REFUSED_BODY_FIELDS if name in request.extra_body]
        if refused:
            raise ConfigurationError(
                f"--batch: agent {request.agent!r} sends {', '.join(refused)} in extra_body, "
                "which the Batch API does not take; remove it or run without --batch"
            )


def check_batch_endpoint(endpoint: LLMEndpoint) -> None:
    """Ask the endpoint's Batch API once, before anything is uploaded.

    Raises:
        ConfigurationError: It has none (404 on ``/files`` or ``/batches``), refuses us, or
            cannot be reached; the message names the endpoint.
    """
    base = endpoint.base_url.rstrip("/")
    try:
        BatchAPI(endpoint).probe()
    except openai.NotFoundError as exc:
        path = exc.response.request.url.path if exc.response is not None else "/files"
        raise ConfigurationError(
            f"--batch: {base} has no Batch API (GET {path} answered 404); this server "
            "takes online calls only: run without --batch"
        ) from None
    except openai.APIStatusError as exc:
        raise ConfigurationError(
            f"--batch: the Batch API of {base} answered HTTP {exc.status_code} "
            f"({exc.message}); check the endpoint and key, or run without --batch"
        ) from None
    except openai.APIConnectionError as exc:
        raise ConfigurationError(
            f"--batch: cannot reach {base} ({exc}); check the endpoint"
        ) from None
