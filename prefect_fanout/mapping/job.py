"""A map run, resolved and checked before anything runs: :class:`MapJob` and :func:`prepare_map`.

Everything that can be wrong with the input is found here, before a flow run
starts and before any call is made: an unreadable corpus (the file and line),
a malformed partition spec, an unknown agent, a missing endpoint, a prompt
template naming a field an item lacks, a bad option. The CLI turns these
errors into exit code 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_fanout.agents.agentsfile import load_agents_file
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
    DEFAULT_MAX_WORKERS,
)
from prefect_fanout.mapping.deployed import check_partition_deployment
from prefect_fanout.mapping.partition import PartitionSpec, parse_partition_spec
from prefect_fanout.mapping.prompts import check_template, item_prompt
from prefect_fanout.mapping.spec import MapSpec
from prefect_fanout.options import CacheOptions, RunOptions
from prefect_fanout.outputs import check_output_ownership

__all__ = ["MapJob", "prepare_map"]


@dataclass
class MapJob:
    """Everything a map run needs, resolved.

    Attributes:
        settings: The map's own settings, as given (the flow run's ``spec`` parameter).
        items: The corpus, in input order.
        agent: The mapping agent.
        path: The run's call path: its resolver (agents, models, endpoint, each once),
            its merged options and its cache settings.
        partitioner: The parsed partition spec, or a key function.
        spec_text: The partition spec as text, for reports.
        requests: The mapping call of each item, by item id (built on lookup: ItemRequests).
        model_name: The model of the mapping calls.
        classifier: The classifier of ``topic:agent=NAME``, if any.
        classifier_requests: Its call for each item, by item id.
        reducer: The tree-reduce agent, if any.
        source_path: The corpus file or directory, when it came from a path.

    """

    settings: MapSpec
    items: list[Item]
    agent: AgentProfile
    path: CallPath
    partitioner: PartitionSpec | Callable[[Item], str]
    spec_text: str
    requests: Mapping[str, CallRequest]
    model_name: str
    classifier: AgentProfile | None = None
    classifier_requests: Mapping[str, CallRequest] = field(default_factory=dict)
    reducer: AgentProfile | None = None
    source_path: Path | None = None

    @property
    def source(self) -> str:
        """The corpus path, or a description of the items given."""
        return self.settings.input

    @property
    def output_dir(self) -> Path:
        """Where the outputs go."""
        return Path(self.settings.output_dir)

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


def _given_items(items_given: Iterable[Any]) -> list[Item]:
    items: list[Item] = []
    seen: set[str] = set()
    for index, entry in enumerate(items_given):
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
    return items


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
    spec: MapSpec,
    options: RunOptions | Mapping[str, Any] | None = None,
    *,
    items: Iterable[Item | Mapping[str, Any]] | None = None,
    agents: Mapping[str, AgentProfile] | None = None,
    key: Callable[[Item], str] | None = None,
) -> MapJob:
    """Read, resolve and check a map run without running anything.

    Args:
        spec: The map's own settings (its corpus, agent, partition spec, outputs, reduce...).
        options: The run's options: model, endpoint (None: ``OPENAI_API_KEY`` /
            ``OPENAI_BASE_URL``), max_workers (default 8), cache (``refresh`` asks again),
            max_tokens, temperature, timeout_seconds, the endpoint limits, task_runner
            (see :class:`~prefect_fanout.options.RunOptions`).
        items: Items given in Python (Items, or dicts with an ``id``) instead of reading
            ``spec.input``, which then describes them.
        agents: Profiles by name, beside (and over) those of ``spec.agents_file``.
        key: A function item -> partition key, instead of ``spec.partition``.

    Returns:
        The job, for :func:`~prefect_fanout.mapping.run.run_map`.

    Raises:
        CorpusError: The corpus cannot be read (the message names file and line).
        PartitionSpecError: The spec is malformed.
        ConfigurationError: Unknown agent, no endpoint, bad option or template.

    """
    spec.check()
    source_path = None if items is not None else Path(spec.input)
    if source_path is None:
        corpus = _given_items(items or ())
    else:
        corpus = load_items(
            source_path,
            encoding=spec.encoding,
            errors=spec.errors,
            follow_symlinks=spec.follow_symlinks,
        )
    partitioner = key if key is not None else parse_partition_spec(spec.partition)
    spec_text = str(partitioner) if isinstance(partitioner, PartitionSpec) else spec.partition
    out = Path(spec.output_dir)
    _check_output_dir(out, source_path)
    check_output_ownership(out, source_path, spec.force)  # outputs are owned
    check_template(corpus, spec.prompt)  # input errors first, before agents and endpoints
    from_file = load_agents_file(spec.agents_file) if spec.agents_file else {}
    profiles = {**from_file, **(agents or {})}
    path = CallPath.of(RunOptions.of(options), profiles)
    check_partition_deployment(path.options)
    resolver = path.resolver
    profile = resolver.agent(spec.agent)
    classifier_name = (
        partitioner.classifier_agent if isinstance(partitioner, PartitionSpec) else None
    )
    classifier = resolver.agent(classifier_name) if classifier_name else None
    reducer = resolver.agent(spec.reduce) if spec.reduce is not None else None
    resolver.check(p for p in (profile, classifier, reducer) if p is not None)
    prompt = spec.prompt
    requests = ItemRequests(
        corpus, profile, lambda item: item_prompt(item, prompt), resolver=resolver, stage="map"
    )
    requests.check()
    classifier_requests: Mapping[str, CallRequest] = {}
    if classifier is not None:
        classifier_requests = ItemRequests(
            corpus,
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
        settings=spec,
        items=corpus,
        agent=profile,
        path=path,
        partitioner=partitioner,
        spec_text=spec_text,
        requests=requests,
        model_name=resolver.model(profile),
        classifier=classifier,
        classifier_requests=classifier_requests,
        reducer=reducer,
        source_path=source_path,
    )
