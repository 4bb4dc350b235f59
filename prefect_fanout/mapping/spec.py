"""A map's own settings, in one typed model: :class:`MapSpec`.

What to map (``input``, ``agent``, ``prompt``), how to cut it (``partition``), where the
outputs go, how to combine them (``reduce``), and how a partition's write is retried. The
run-wide settings (model, endpoint, limits, cache, task runner...) are
:class:`~prefect_fanout.options.RunOptions`, beside it.

The CLI and the Python API build a spec once; :func:`~prefect_fanout.mapping.job.prepare_map`
reads and checks the work it names, the ``fanout-map`` flow takes it as its ``spec``
parameter (so Prefect's run form shows its fields), and a deployment names its fields
under ``spec:``.
"""

from __future__ import annotations

import codecs
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prefect_fanout.errors import ConfigurationError
from prefect_fanout.mapping.defaults import (
    DEFAULT_ACTIVE_PARTITIONS,
    DEFAULT_PARTITION_RETRIES,
    DEFAULT_PARTITION_RETRY_DELAY,
    DEFAULT_REDUCE_BUDGET,
)

__all__ = ["MapSpec"]


class MapSpec(BaseModel):
    """A map's own settings (the run's options are :class:`~prefect_fanout.options.RunOptions`).

    Attributes:
        input: A JSONL file (one object with an ``id`` per line) or a directory of files;
            for items given in Python, a description of them.
        agent: The agent run on every item (a built-in or from ``agents_file``).
        partition: ``count:N``, ``size[:K]``, ``time:month|day|year[:FIELD]``,
            ``topic:FIELD``, ``topic:agent=NAME`` or ``key:FIELD``.
        output_dir: Where the outputs go (not inside the input directory).
        agents_file: A JSON/YAML file of agent profiles by name.
        prompt: A template rendering record fields into each item's prompt.
        reduce: An agent that combines the completed outputs in a tree.
        reduce_budget: Estimated tokens (characters / 4) one reduce call may combine.
        active_partitions: Partitions mapped at once.
        partition_retries: Retries of a partition whose output cannot be written.
        partition_retry_delay: Seconds before the first partition retry (then doubling).
        encoding: How a directory corpus's files are decoded.
        errors: ``strict`` (a file that does not decode fails the run before any call),
            ``replace`` or ``ignore``.
        force: Write into an output directory holding files fanout did not write (files
            named like its outputs are replaced; nothing else is touched).
        follow_symlinks: Read links in a directory corpus that point outside it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(description="A JSONL file or a directory of files")
    agent: str = Field(description="The agent run on every item")
    partition: str = Field(description="count:N, size, time:month, topic:FIELD, key:FIELD...")
    output_dir: str = Field(description="Where the outputs go")
    agents_file: str | None = Field(default=None, description="Agent profiles (JSON or YAML)")
    prompt: str | None = Field(default=None, description="Template of each item's prompt")
    reduce: str | None = Field(default=None, description="Agent that combines the outputs")
    reduce_budget: int = DEFAULT_REDUCE_BUDGET
    active_partitions: int = DEFAULT_ACTIVE_PARTITIONS
    partition_retries: int = DEFAULT_PARTITION_RETRIES
    partition_retry_delay: float = DEFAULT_PARTITION_RETRY_DELAY
    encoding: str = "utf-8"
    errors: str = Field(default="strict", description="strict, replace or ignore")
    force: bool = False
    follow_symlinks: bool = False

    def check(self) -> None:
        """Refuse settings no map can run with, naming the flag.

        Raises:
            ConfigurationError: An unknown encoding or decoding policy, or a number out of
                its range.
        """
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigurationError(f"--encoding {self.encoding!r}: unknown encoding") from None
        checks = [
            (
                self.errors in ("strict", "replace", "ignore"),
                f"--errors {self.errors!r}: expected strict, replace or ignore",
            ),
            (
                self.active_partitions >= 1,
                f"--active-partitions must be at least 1, got {self.active_partitions}",
            ),
            (
                self.partition_retries >= 0,
                f"partition retries must be at least 0, got {self.partition_retries}",
            ),
            (
                self.partition_retry_delay >= 0,
                f"partition retry delay must be at least 0, got {self.partition_retry_delay}",
            ),
            (
                self.reduce_budget >= 1,
                f"--reduce-budget must be at least 1 token, got {self.reduce_budget}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)

    def run_name(self) -> str:
        """The map's flow-run name: ``map AGENT by PARTITION``."""
        return f"map {self.agent} by {self.partition}"


def spec_of(value: MapSpec | dict[str, Any]) -> MapSpec:
    """A spec from itself or from its fields (a flow run's parameters may hold either)."""
    return value if isinstance(value, MapSpec) else MapSpec.model_validate(value)
