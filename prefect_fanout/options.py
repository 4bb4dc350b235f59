"""Run options: every run-wide setting in one model, merged once, by one precedence.

:class:`RunOptions` is what every shape takes (``call_agent``, ``fan_out``, ``fan_in``,
``pipeline``, ``tree``, ``dispatch_plan`` / ``run_plan``, ``map_corpus``) as ``options=``, what
each deployable flow takes as its one ``options`` parameter (one form in Prefect's UI), and what
each ``fanout`` command builds from its flags. A new run-wide setting is one field here.

Precedence, highest first (README's "Run options" table; a test per row):

1. a command-line flag (``--max-tokens 50``);
2. options passed in Python (``options=RunOptions(...)``, a deployment's ``options``
   parameter, ``fanout ... --options FILE``);
3. the plan's ``config`` (dispatch only);
4. the agent's profile (model, max_tokens, temperature, timeout_seconds);
5. the endpoint block (default_model, request_timeout_seconds and the limits);
6. the built-in default.

Layers 1-3 are merged by :func:`merge_options`, the only place options merge. Layers 4-6 differ
per agent, so the run's resolver (:class:`prefect_fanout.agents.resolver.Resolver`) applies them
under the merged options when it builds each request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.endpoints import LLMEndpoint

__all__ = [
    "LIMIT_FIELDS",
    "CacheMode",
    "CacheOptions",
    "RunOptions",
    "merge_options",
]

LIMIT_FIELDS = ("max_concurrency", "requests_per_minute", "tokens_per_minute")
"""The options that set an endpoint's limits (see :mod:`prefect_fanout.limits`)."""


class CacheMode(StrEnum):
    """How a call uses the cache.

    Attributes:
        ON: Read a stored answer if there is one, else call and store.
        REFRESH: Always call, and store the new answer over the old one.
        OFF: Neither read nor write the cache.
    """

    ON = "on"
    REFRESH = "refresh"
    OFF = "off"


@dataclass(frozen=True)
class CacheOptions:
    """Cache settings of a call, as the agent-call task uses them.

    Attributes:
        mode: ``on``, ``refresh`` or ``off``.
        expiration: How long a stored answer stays valid; None keeps it for ever.
        result_storage: A Prefect storage block (or its slug) for results; None
            uses Prefect's default (``PREFECT_LOCAL_STORAGE_PATH``).
    """

    mode: CacheMode = CacheMode.ON
    expiration: timedelta | None = None
    result_storage: Any = None

    @classmethod
    def of(cls, value: CacheOptions | CacheMode | str | None) -> CacheOptions:
        """Options from options, a mode or a mode name (``None`` is ``on``).

        Raises:
            ConfigurationError: The name is not ``on``, ``refresh`` or ``off``.
        """
        if isinstance(value, CacheOptions):
            return value
        try:
            return cls(mode=CacheMode(value or CacheMode.ON))
        except ValueError:
            valid = ", ".join(mode.value for mode in CacheMode)
            raise ConfigurationError(
                f"unknown cache mode {value!r}; valid modes: {valid}"
            ) from None


class RunOptions(BaseModel):
    """Every run-wide option of a call, a pattern, a dispatch or a map.

    Every field defaults to None, meaning "not set here": a lower layer of the precedence
    (see the module) or the built-in default decides. Fields are checked when the options
    are made; a bad value is a :class:`~prefect_fanout.errors.ConfigurationError` naming
    the field.

    Attributes:
        model: A model for every agent (``test`` runs offline). Default: the agent's, then
            the endpoint's ``default_model``, then what the server serves, then ``gpt-4o-mini``.
        endpoint: An ``LLMEndpoint`` block's name, or an endpoint. Default: ``OPENAI_*``.
        max_workers: Calls (or plan tasks) in flight at most. Default: 8 (a plan: 4).
        failure_policy: ``partial`` (a failure skips only what depends on it) or
            ``all_or_nothing``. Default: ``partial``.
        cache: ``on`` (read and write), ``refresh`` (call again, store) or ``off``.
            Default: ``on``.
        cache_expiration: How long a stored answer stays valid. Default: for ever.
        result_storage: A Prefect storage block (or its ``type/name`` slug) for answers.
            Default: Prefect's local storage.
        max_tokens: A completion budget for every agent. Default: the agent's (1024).
        temperature: A sampling temperature for every agent. Default: the agent's.
        timeout_seconds: The deadline of each HTTP request. Default: the endpoint's, then
            the agent's (120 s; 600 s for a server that is not OpenAI's).
        max_concurrency: Requests in flight at once to the endpoint, across processes.
        requests_per_minute: Requests per minute to the endpoint.
        tokens_per_minute: Tokens per minute to the endpoint.
        task_runner: ``thread``, ``dask`` or ``ray``: where the calls run. Default: ``thread``.
        dask_address: An existing Dask scheduler (with ``dask``). Default: a LocalCluster.
        ray_address: An existing Ray cluster (with ``ray``). Default: a local Ray.
        chunk_size: With ``dask`` or ``ray``, the most calls of a map sent to a worker as
            one chunk. Default: the total over four chunks per worker slot, 50 to 500.
        calls_per_run: The most calls in one child flow run: a map runs each partition as a
            flow run of the map's, cut into several when larger (``fan_out`` the same over
            more calls). Keep it under the server's graph limit
            (``PREFECT_SERVER_API_MAX_FLOW_RUN_GRAPH_NODES``, 10,000); at 1,900 or less the
            UI draws every graph without a click on "Display graph". Default: 5,000.
        partition_deployment: ``FLOW/DEPLOYMENT`` of a deployed ``fanout-partition`` flow:
            a map runs each chunk as a flow run of it, on that deployment's work pool.
            Default: the chunks go to the task runner.
        trace_dir: Where a dispatch writes its trace files. Default: none written.
        batch: Send a map's uncached calls through the provider's Batch API (half the
            price, answers within 24 h; README "Batch mode"). Default: online calls.
        batch_wait: With ``batch``: wait for the batches and finish the run (True), or
            submit, record and end the run, collecting on the next run (False). Default: wait.
        batch_max_tokens: With ``batch``: the most tokens (estimated) enqueued at once, per
            batch and over the batches in flight (the provider's enqueued-token limit).
            Default: no limit of ours.
        batch_max_requests: With ``batch``: requests per batch file (at most 50,000, the
            API's limit). Default: 50,000.
        batch_poll_seconds: With ``batch``: the first wait between status polls; each wait
            is 1.5 times the last, up to 300 s. Default: 10.
        dry_run: Resolve everything and look every call up in the cache, then report the
            calls, tokens and cost without a single request. Default: off.
        budget_tokens: The most tokens (prompt + completion, failed asks included) the run
            may spend; no call starts that could take the spend past it. Default: none.
        budget_usd: The most USD the run may spend (needs priced models). Default: none.
        budget_name: Share the budget with every run of the same name, held on the Prefect
            server (see :mod:`prefect_fanout.budget.shared`). Default: this run's own.
        long_inputs: An input over the model's context: ``fail`` (the call fails before any
            request, the run goes on), ``truncate`` (cut to fit) or ``chunk`` (answered in
            overlapping chunks, combined per item); see docs/real-models.md. Default: the
            agent's ``long_inputs``, then ``fail``.
        log_calls: Log a line per successful call at INFO (model, seconds, attempts,
            tokens, finish, cost), and keep Prefect's "Finished in state Completed()" line
            of each call's task run. Default: off; both are left out of the run's logs
            (ours is at DEBUG), while failures, retries, warnings, partition and progress
            lines stay (see :mod:`prefect_fanout.ui.quiet_logs`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    model: str | None = Field(default=None, min_length=1)
    endpoint: str | LLMEndpoint | None = None
    max_workers: int | None = Field(default=None, ge=1)
    failure_policy: Literal["partial", "all_or_nothing"] | None = None
    cache: CacheMode | None = None
    cache_expiration: timedelta | None = None
    result_storage: Any = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(default=None, gt=0)
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    task_runner: Literal["thread", "dask", "ray"] | None = None
    dask_address: str | None = None
    ray_address: str | None = None
    chunk_size: int | None = Field(default=None, ge=1)
    calls_per_run: int | None = Field(default=None, ge=1)
    partition_deployment: str | None = Field(default=None, pattern=r"^[^/]+/[^/]+$")
    trace_dir: str | None = None
    batch: bool | None = None
    batch_wait: bool | None = None
    batch_max_tokens: int | None = Field(default=None, gt=0)
    batch_max_requests: int | None = Field(default=None, gt=0, le=50_000)
    batch_poll_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    dry_run: bool | None = None
    budget_tokens: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    budget_name: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    long_inputs: Literal["fail", "truncate", "chunk"] | None = None
    log_calls: bool | None = None

    @field_validator("trace_dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @classmethod
    def of(cls, value: RunOptions | Mapping[str, Any] | None) -> RunOptions:
        """Options from options, a mapping of fields (a flow parameter, a file) or None.

        Raises:
            ConfigurationError: A field is unknown or its value invalid (named).
        """
        if isinstance(value, RunOptions):
            return value
        try:
            return cls.model_validate(dict(value or {}))
        except ValidationError as exc:
            raise ConfigurationError(f"invalid run options: {_problems(exc)}") from None

    def given(self) -> dict[str, Any]:
        """The fields set to a value (not None), by name."""
        return {
            name: value
            for name in type(self).model_fields
            if (value := getattr(self, name)) is not None
        }

    def limits(self) -> dict[str, int]:
        """The endpoint limits these options set (unset ones left out)."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS if getattr(self, name)}

    def cache_options(self) -> CacheOptions:
        """The cache settings of every call of the run."""
        return CacheOptions(
            mode=CacheMode(self.cache or CacheMode.ON),  # a model_copy(update=...) skips checks
            expiration=self.cache_expiration,
            result_storage=self.result_storage,
        )

    def workers(self, default: int) -> int:
        """``max_workers``, or the shape's default."""
        return self.max_workers if self.max_workers is not None else default

    def policy(self) -> str:
        """``failure_policy``, or ``partial``."""
        return self.failure_policy or "partial"

    def budgeted(self) -> bool:
        """True when a token or dollar budget is set."""
        return self.budget_tokens is not None or self.budget_usd is not None

    def runner(self) -> str:
        """``task_runner``, or ``thread``."""
        return self.task_runner or "thread"


def merge_options(*layers: RunOptions | Mapping[str, Any] | None) -> RunOptions:
    """Merge run options, highest precedence first: each field from the first layer setting it.

    This is the one place run options merge. Callers pass their layers in the documented
    order (see the module): command-line flags, then options passed in Python, then a
    plan's ``config``. A layer is a :class:`RunOptions`, a mapping of its fields (None
    values count as unset), or None.

    Returns:
        The merged options.

    Raises:
        ConfigurationError: A layer has an unknown field or an invalid value.
    """
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged.update(RunOptions.of(layer).given())
    return RunOptions.of(merged)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'options'}: {error['msg']}"
        for error in exc.errors()
    )
