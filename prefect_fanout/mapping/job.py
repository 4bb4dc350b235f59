"""A map run, resolved and checked before anything runs: :class:`MapJob` and :func:`prepare_map`.

Everything that can be wrong with the input is found here, before a flow run
starts and before any call is made: an unreadable corpus (the file and line),
a malformed partition spec, an unknown agent, a missing endpoint, a prompt
template naming a field an item lacks, a bad option. The CLI turns these
errors into exit code 2.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.batch.check import (
    check_batch_endpoint,
    check_batch_options,
    check_batch_requests,
)
from prefect_fanout.call.budgeted import check_first_call
from prefect_fanout.call.path import CallPath
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.mapping.corpus import CorpusError, Item, load_items
from prefect_fanout.mapping.defaults import (
    DEFAULT_ACTIVE_PARTITIONS,
    DEFAULT_MAX_WORKERS,
    DEFAULT_PARTITION_RETRIES,
    DEFAULT_PARTITION_RETRY_DELAY,
    DEFAULT_REDUCE_BUDGET,
)
from prefect_fanout.mapping.deployed import check_partition_deployment
from prefect_fanout.mapping.partition import PartitionSpec, parse_partition_spec
from prefect_fanout.mapping.prompts import check_template, item_prompt
from prefect_fanout.options import CacheOptions, RunOptions
from prefect_fanout.outputs import check_output_ownership

__all__ = ["MapJob", "prepare_map"]


@dataclass
class MapJob:
    """Everything a map run needs, resolved.

    Attributes:
        items: The corpus, in input order.
        source: The corpus path, or a description of the items given.
        agent: The mapping agent.
        path: The run's call path: its resolver (agents, models, endpoint, each once),
            its merged options and its cache settings.
        spec: The partition spec, or a key function.
        spec_text: The spec as text, for reports.
        output_dir: Where outputs go.
        requests: The mapping call of each item, by item id (built on lookup: ItemRequests).
        model_name: The model of the mapping calls.
        classifier: The classifier of ``topic:agent=NAME``, if any.
        classifier_requests: Its call for each item, by item id.
        reducer: The tree-reduce agent, if any.
        reduce_budget: Estimated tokens per reduce call.
        active_partitions: Partitions mapped at once (their items interleaved).
        partition_retries: Retries of a failing partition write.
        partition_retry_delay: Seconds before the first retry (then doubling).
        source_path: The corpus file or directory, when it came from a path.
        force: Write among files fanout did not write (``--force``).

    """

    items: list[Item]
    source: str
    agent: AgentProfile
    path: CallPath
    spec: PartitionSpec | Callable[[Item], str]
    spec_text: str
    output_dir: Path
    requests: Mapping[str, CallRequest]
    model_name: str
    classifier: AgentProfile | None = None
    classifier_requests: Mapping[str, CallRequest] = field(default_factory=dict)
    reducer: AgentProfile | None = None
    reduce_budget: int = DEFAULT_REDUCE_BUDGET
    active_partitions: int = DEFAULT_ACTIVE_PARTITIONS
    partition_retries: int = DEFAULT_PARTITION_RETRIES
    partition_retry_delay: float = DEFAULT_PARTITION_RETRY_DELAY
    source_path: Path | None = None
    force: bool = False

    @property
    def options(self) -> RunOptions:
        """The run's merged options."""
        return self.path.options

    @property
    def resolver(self) -> Resolver:
        """The run's resolver."""
        return self.path.resolver

    @property
    def cache(self) -> CacheOptions:
        """Cache settings of every call."""
        return self.path.cache

    @property
    def max_workers(self) -> int:
        """Calls in flight at most."""
        return self.options.workers(DEFAULT_MAX_WORKERS)


def _items(
    items_or_path: Any, encoding: str, errors: str, follow_symlinks: bool = False
) -> tuple[list[Item], str, Path | None]:
    if isinstance(items_or_path, str | Path):
        path = Path(items_or_path)
        items = load_items(path, encoding=encoding, errors=errors, follow_symlinks=follow_symlinks)
        return items, str(path), path
    items: list[Item] = []
    seen: set[str] = set()
    for index, entry in enumerate(items_or_path):
        if isinstance(entry, Item):
            item = entry.model_copy(update={"index": index})
        elif isinstance(entry, Mapping) and isinstance(entry.get("id"), str | int):
            text = entry.get("text")
            item = Item(
                id=str(entry["id"]),
                text=text if isinstance(text, str) else None,
                record=dict(entry),
                index=index,
            )
        else:
            raise CorpusError(f"item #{index + 1}: expected an Item or a dict with an 'id'")
        if item.id in seen:
            raise CorpusError(f"item #{index + 1}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise CorpusError("no items given; nothing to map (no output was touched)")
    return items, f"<{len(items)} items>", None


def _check_output_dir(output_dir: Path, source: Path | None) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigurationError(f"--output {output_dir}: exists and is not a directory")
    ancestor = output_dir.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigurationError(
            f"--output {output_dir}: cannot be created: {ancestor} is a file, not a directory"
        )
    if source is not None and source.is_dir():
        out, src = output_dir.resolve(), source.resolve()
        if out == src or src in out.parents:
            raise ConfigurationError(
                f"--output {output_dir} is inside the input directory {source}: the outputs "
                "would become input on the next run; choose a directory outside it"
            )


def probe_writable(output_dir: Path) -> None:
    """Create the output directory (and partitions/) and prove a file can be written there.

    A write probe, not a permission check: it also catches read-only mounts and
    the cases where root ignores permission bits.

    Raises:
        ConfigurationError: One line naming the path and the reason (exit code 2).
    """
    probe = output_dir / f".fanout-write-probe-{os.getpid()}"
    try:
        (output_dir / "partitions").mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = exc.filename or output_dir
        raise ConfigurationError(f"--output {output_dir}: cannot write {where}: {reason}") from None


def _check_decoding(encoding: str, errors: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigurationError(f"--encoding {encoding!r}: unknown encoding") from None
    if errors not in ("strict", "replace", "ignore"):
        raise ConfigurationError(f"--errors {errors!r}: expected strict, replace or ignore")


def _check_options(active: int, retries: int, delay: float, budget: int) -> None:
    checks = [
        (active >= 1, f"--active-partitions must be at least 1, got {active}"),
        (retries >= 0, f"partition retries must be at least 0, got {retries}"),
        (delay >= 0, f"partition retry delay must be at least 0, got {delay}"),
        (budget >= 1, f"--reduce-budget must be at least 1 token, got {budget}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigurationError(message)


def _variables(item: Item) -> dict[str, Any]:
    """Record fields an agent's own prompt template may name ({input} stays the prompt)."""
    values = {k: v for k, v in item.record.items() if k != "input"}
    values.setdefault("id", item.id)
    return values


class ItemRequests(Mapping[str, CallRequest]):
    """Each item's call, by item id, built when asked for (read-only).

    A request is the shared settings of the first one (agent, model, endpoint, tags) with
    the item's own messages and id. Holding them all would cost about 1.4 KB an item
    (140 MB at 100,000 items) for requests that are each sent once: they are built again
    from the item on each lookup. :meth:`check` builds every one once, so a template or
    agent error names its item before anything runs.
    """

    def __init__(
        self,
        items: Sequence[Item],
        profile: AgentProfile,
        prompts: Callable[[Item], str],
        *,
        resolver: Resolver,
        stage: str,
    ) -> None:
        self._items = {item.id: item for item in items}
        self._profile = profile
        self._prompts = prompts
        self._resolver = resolver
        self._stage = stage
        self._first: CallRequest | None = None
        if items:
            self._first = self._request_of(items[0], None)

    def _request_of(self, item: Item, first: CallRequest | None) -> CallRequest:
        text = self._prompts(item)  # a template error already names the item
        try:
            if first is None:
                return self._resolver.request(
                    text,
                    agent=self._profile,
                    variables=_variables(item),
                    item_id=item.id,
                    tags=(f"fanout:{self._stage}",),
                )
            # Only the messages and the id differ between items: the rest of the first
            # request is shared.
            messages = self._resolver.messages(
                text, agent=self._profile, variables=_variables(item)
            )
            fields = {**first.__dict__, "item_id": item.id, "messages": messages}
            return CallRequest.model_construct(first.model_fields_set, **fields)
        except ConfigurationError as exc:
            raise ConfigurationError(f"item {item.id!r} ({self._stage}): {exc}") from None

    def check(self) -> None:
        """Build every request once (and drop it): the first bad item raises its error."""
        for _ in self.values():
            pass

    def __getitem__(self, item_id: str) -> CallRequest:
        item = self._items[item_id]
        first = self._first
        if first is not None and first.item_id == item_id:
            return first
        return self._request_of(item, first)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def prepare_map(
    items_or_path: Any,
    *,
    agent: str | AgentProfile,
    partition: str | PartitionSpec | Callable[[Item], str],
    output_dir: str | Path,
    agents: Mapping[str, AgentProfile] | None = None,
    prompt: str | None = None,
    reduce: str | AgentProfile | None = None,
    reduce_budget: int = DEFAULT_REDUCE_BUDGET,
    active_partitions: int = DEFAULT_ACTIVE_PARTITIONS,
    partition_retries: int = DEFAULT_PARTITION_RETRIES,
    partition_retry_delay: float = DEFAULT_PARTITION_RETRY_DELAY,
    encoding: str = "utf-8",
    errors: str = "strict",
    options: RunOptions | Mapping[str, Any] | None = None,
    force: bool = False,
    follow_symlinks: bool = False,
) -> MapJob:
    """Read, resolve and check a map run without running anything.

    Args:
        items_or_path: A JSONL file or directory, or a list of Items or of dicts with an ``id``.
        agent: The mapping agent (a name or a profile).
        partition: A spec string (``count:8``, ``time:month``, ``topic:agent=NAME``, ...),
            a parsed spec, or a function item -> key.
        output_dir: Where to write the outputs (not inside an input directory).
        agents: Extra profiles by name (e.g. from ``--agents FILE``).
        prompt: A template rendering record fields into each item's prompt.
        reduce: An agent that combines the completed outputs in a tree, if any.
        reduce_budget: Estimated tokens (chars / 4) one reduce call may combine.
        active_partitions: Partitions mapped at once; the next opens when one
            has handed out all its items.
        partition_retries: Retries of a partition whose output cannot be written.
        partition_retry_delay: Seconds before the first retry, doubling after each.
        encoding: How a directory corpus's files are decoded.
        errors: ``strict`` (a file that does not decode is an error), ``replace`` or
            ``ignore``.
        options: The run's options: model, endpoint (None: ``OPENAI_API_KEY`` /
            ``OPENAI_BASE_URL``), max_workers (default 8), cache (``refresh`` asks again),
            max_tokens, temperature, timeout_seconds, the endpoint limits, task_runner
            (see :class:`~prefect_fanout.options.RunOptions`).
        force: Write into an output directory holding files fanout did not write
            (files named like its outputs are replaced; nothing else is touched).
        follow_symlinks: Read links in a directory corpus that point outside it.

    Returns:
        The job, for :func:`~prefect_fanout.mapping.run.execute_map`.

    Raises:
        CorpusError: The corpus cannot be read (the message names file and line).
        PartitionSpecError: The spec is malformed.
        ConfigurationError: Unknown agent, no endpoint, bad option or template.

    """
    _check_decoding(encoding, errors)
    items, source, source_path = _items(items_or_path, encoding, errors, follow_symlinks)
    spec = parse_partition_spec(partition) if isinstance(partition, str) else partition
    spec_text = str(spec) if isinstance(spec, PartitionSpec) else getattr(spec, "__name__", "key")
    out = Path(output_dir)
    _check_output_dir(out, source_path)
    check_output_ownership(out, source_path, force)  # outputs are owned
    _check_options(active_partitions, partition_retries, partition_retry_delay, reduce_budget)
    check_template(items, prompt)  # input errors first, before agents and endpoints
    path = CallPath.of(RunOptions.of(options), agents)
    check_partition_deployment(path.options)
    resolver = path.resolver
    profile = resolver.agent(agent)
    classifier_name = spec.classifier_agent if isinstance(spec, PartitionSpec) else None
    classifier = resolver.agent(classifier_name) if classifier_name else None
    reducer = resolver.agent(reduce) if reduce is not None else None
    resolver.check(p for p in (profile, classifier, reducer) if p is not None)
    requests = ItemRequests(
        items, profile, lambda item: item_prompt(item, prompt), resolver=resolver, stage="map"
    )
    requests.check()
    classifier_requests: Mapping[str, CallRequest] = {}
    if classifier is not None:
        classifier_requests = ItemRequests(
            items,
            classifier,
            lambda item: item.prompt_text(),
            resolver=resolver,
            stage="classify",
        )
        classifier_requests.check()
    if check_batch_options(path.options):  # batch mode: refused before anything is uploaded
        check_batch_requests(requests.values())
        check_batch_endpoint(resolver.endpoint())
    if path.budget is not None:
        first = classifier_requests.values() if classifier is not None else requests.values()
        check_first_call(path.budget, first, path.cache)
    probe_writable(out)  # last: a run refused for any other reason creates nothing
    return MapJob(
        items=items,
        source=source,
        agent=profile,
        path=path,
        spec=spec,
        spec_text=spec_text,
        output_dir=out,
        requests=requests,
        model_name=resolver.model(profile),
        classifier=classifier,
        classifier_requests=classifier_requests,
        reducer=reducer,
        reduce_budget=reduce_budget,
        active_partitions=active_partitions,
        partition_retries=partition_retries,
        partition_retry_delay=partition_retry_delay,
        source_path=source_path,
        force=force,
    )
