"""Inputs longer than the model's context: fail them, cut them, or answer them in chunks.

Before a call is sent, when its context is known (:mod:`prefect_fanout.agents.context`), its
messages (upstream results included) are counted. An input fits when its tokens plus the
answer's ``max_tokens`` fit the context. One that does not is handled as the call's
``long_inputs`` says (the run's option, else the agent's, else ``fail``):

- ``fail``: the call fails at once with :class:`~prefect_fanout.errors.InputTooLongError`,
  naming the call, the tokens and the context; nothing is sent, and the run goes on;
- ``truncate``: the last user message is cut to fit, with a warning; the result (and a map
  row) says ``truncated: true``;
- ``chunk``: the last user message is split into overlapping chunks that fit (about
  :data:`OVERLAP_TOKENS` tokens of overlap); each chunk is a call of its own, through the run's
  call path (cached, retried, limited and budgeted like any), with the same system prompt and
  a first line ``[Part i of n of a longer input ...]``. The answers are combined into one
  result per call (``chunks: n``):

  - structured answers (an object schema) are merged field by field, without a call: lists
    are joined in chunk order without duplicates (up to the schema's ``maxItems``), objects
    merged the same way, and any other field takes the first chunk's value that is set;
    the merge is validated against the schema;
  - text answers are combined by the same agent with :data:`COMBINE_INSTRUCTION`, the chunk
    answers as upstream results; answers that do not fit one combine call are combined in
    groups, level by level, as the map's tree reduce does.

Only the last user message is cut or split: the agent's instructions belong in its system
prompt, which every chunk carries.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
from prefect.futures import PrefectFuture

from prefect_fanout.agents.context import TokenCounter, answer_reserve, fitting_prefix, split_text
from prefect_fanout.call.merge import merge_outputs, mergeable
from prefect_fanout.call.task import result_from_future
from prefect_fanout.call.window import Submitted
from prefect_fanout.errors import BudgetExhausted, InputTooLongError, OutputValidationError
from prefect_fanout.limits.estimate import TOKENS_PER_MESSAGE
from prefect_fanout.llm.pricing import add_costs
from prefect_fanout.llm.request import CallRequest, output_as_text, render_context
from prefect_fanout.llm.result import AgentResult

__all__ = ["COMBINE_INSTRUCTION", "OVERLAP_TOKENS", "LongInput", "answer_in_chunks"]

logger = logging.getLogger("prefect_fanout.long_inputs")

OVERLAP_TOKENS = 200
"""Tokens two neighbouring chunks share (at most a tenth of a chunk)."""

MARGIN_TOKENS = 16
"""Tokens kept free beside the counted input, for the chat template's own framing."""

COMBINE_INSTRUCTION = (
    "The input was too long for one call, so it was split into {count} overlapping parts and "
    "each part was answered on its own. Combine the {count} answers listed under 'Upstream "
    "results' into one answer to the task: keep every distinct finding, merge duplicates, "
    "and answer in the same form as the answers."
)

PART_HEADER = "[Part {index} of {count} of a longer input; the parts overlap a little.]\n\n"


def _last_user(messages: list[dict[str, str]]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return None


def _with_user_text(request: CallRequest, index: int, text: str, **update: Any) -> CallRequest:
    messages = [dict(m) for m in request.messages]
    messages[index]["content"] = text
    return request.model_copy(update={"messages": messages, **update})


class LongInput:
    """One call's input checked against its context, and what ``long_inputs`` does with it.

    Args:
        request: The call's request with its upstream context applied.
        counter: Counts the model's tokens.
        run_logger: Where warnings go (the flow run's logger when there is one).
    """

    def __init__(self, request: CallRequest, counter: TokenCounter, run_logger: Any = None):
        self.request = request
        self.counter = counter
        self.logger = run_logger or logger
        self.context = int(request.context_tokens or 0)
        self.reserve = answer_reserve(request.max_tokens)

    @functools.cached_property
    def tokens(self) -> int:
        """The input's tokens (upstream results included), counted once."""
        return self.counter.messages(self.request.messages)

    @property
    def fits(self) -> bool:
        """True when the input and the answer's ``max_tokens`` fit the context.

        An input whose UTF-8 bytes fit is not counted: no tokenizer makes more tokens than
        bytes, so a short input costs no count (nor a ``/tokenize`` request).
        """
        room = self.context - self.reserve - MARGIN_TOKENS
        texts = [str(m.get("content", "")) for m in self.request.messages]
        most = sum(len(t.encode("utf-8")) for t in texts) + TOKENS_PER_MESSAGE * len(texts)
        return most <= room or self.tokens <= room

    def error(self) -> InputTooLongError:
        """The failure of ``long_inputs: fail``: the call, its tokens and the context."""
        return InputTooLongError(
            f"{self.request.label}: the input is {self.tokens} tokens (counted by "
            f"{self.counter.name}) and does not fit the context of {self.context} tokens with "
            f"{self.reserve} kept for the answer (max_tokens); nothing was sent. Set "
            "long_inputs to truncate or chunk (--long-inputs, the agent's long_inputs), or "
            "give the server a longer context",
            0,
            input_tokens=self.tokens,
            context_tokens=self.context,
        )

    def _room(self, index: int, header: str = "") -> int:
        """Tokens left for the user message at ``index`` once the rest is counted."""
        others = [m for i, m in enumerate(self.request.messages) if i != index]
        fixed = self.counter.messages(others) if others else 0
        fixed += self.counter.count(header) + 4 if header else 4
        return self.context - self.reserve - MARGIN_TOKENS - fixed

    def truncated(self) -> CallRequest | InputTooLongError:
        """The request with its last user message cut to fit (``long_inputs: truncate``)."""
        index = _last_user(self.request.messages)
        room = self._room(index) if index is not None else 0
        if index is None or room <= 0:
            return self.error()
        text = self.request.messages[index].get("content", "")
        kept = fitting_prefix(text, room, self.counter)
        self.logger.warning(
            "[%s] the input is %d tokens, over the context of %d with %d kept for the answer: "
            "cut to its first %d of %d characters (long_inputs: truncate)",
            self.request.label,
            self.tokens,
            self.context,
            self.reserve,
            len(kept),
            len(text),
        )
        return _with_user_text(self.request, index, kept, truncated=True)

    def chunks(self) -> list[CallRequest] | InputTooLongError:
        """The chunk requests of ``long_inputs: chunk``, in order (or why there can be none)."""
        index = _last_user(self.request.messages)
        if index is None:
            return self.error()
        header = PART_HEADER.format(index=999, count=999)
        room = self._room(index, header)
        if room <= 0:
            return self.error()
        text = self.request.messages[index].get("content", "")
        pieces = split_text(text, room, min(OVERLAP_TOKENS, room // 10), self.counter)
        count = len(pieces)
        requests = []
        for number, piece in enumerate(pieces, start=1):
            body = PART_HEADER.format(index=number, count=count) + piece
            item = f"{self.request.item_id or self.request.agent}#chunk-{number}of{count}"
            requests.append(_with_user_text(self.request, index, body, item_id=item))
        self.logger.warning(
            "[%s] the input is %d tokens, over the context of %d with %d kept for the answer: "
            "answering it in %d overlapping chunks (long_inputs: chunk)",
            self.request.label,
            self.tokens,
            self.context,
            self.reserve,
            count,
        )
        return requests


def _wait(submitted: Submitted) -> AgentResult:
    if isinstance(submitted, AgentResult):
        return submitted
    if isinstance(submitted, BaseException):
        raise submitted
    assert isinstance(submitted, PrefectFuture)
    return result_from_future(submitted)


def answer_in_chunks(
    long_input: LongInput,
    chunks: list[CallRequest],
    submit: Callable[[CallRequest], Submitted],
) -> AgentResult | Exception:
    """Answer each chunk through ``submit`` and combine the answers into one result.

    Args:
        long_input: The call's long input (its request and counter).
        chunks: The chunk requests (:meth:`LongInput.chunks`).
        submit: Submits one request through the run's call path (cache, budget, limits).

    Returns:
        The combined result (``chunks`` set), or the error that ended a chunk or the combine.
    """
    started = time.perf_counter()
    request = long_input.request
    pending = [submit(chunk) for chunk in chunks]  # all in flight at once, then collected
    answers: list[AgentResult] = []
    try:
        for submitted in pending:
            answers.append(_wait(submitted))
    except Exception as exc:  # the first chunk that failed is the call's outcome
        return exc
    parts: list[AgentResult] = list(answers)
    if request.output_schema is not None and mergeable(request.output_schema):
        try:
            output = merge_outputs([a.output for a in answers], request)
        except (ValueError, jsonschema.ValidationError) as exc:
            return OutputValidationError(
                f"{request.label}: the {len(answers)} chunk answers could not be merged into "
                f"one that matches the output schema: {str(exc).splitlines()[0][:300]}",
                0,
            )
        raw = output.model_dump_json() if hasattr(output, "model_dump_json") else json.dumps(output)
    else:
        try:
            combined = _combine_texts(long_input, answers, submit, parts)
        except Exception as exc:  # a combine call failed (BudgetExhausted propagates)
            if isinstance(exc, BudgetExhausted):
                raise
            return exc
        output, raw = combined.output, combined.raw_text
    cost: float | None = 0.0
    for part in parts:
        cost = add_costs(cost, part.cost_usd)
    return AgentResult(
        agent=request.agent,
        item_id=request.item_id,
        output=output,
        raw_text=raw,
        model=parts[-1].model,
        finish_reason=parts[-1].finish_reason,
        prompt_tokens=sum(p.prompt_tokens for p in parts),
        completion_tokens=sum(p.completion_tokens for p in parts),
        cost_usd=cost,
        latency_s=round(time.perf_counter() - started, 6),
        attempts=sum(p.attempts for p in parts),
        cached=all(p.cached for p in parts),
        cache_key=None,
        limit_wait_s=round(sum(p.limit_wait_s for p in parts), 6),
        endpoint=parts[-1].endpoint,
        chunks=len(chunks),
    )


def _combine_request(request: CallRequest, answers: Mapping[str, str]) -> CallRequest:
    index = _last_user(request.messages)
    instruction = COMBINE_INSTRUCTION.format(count=len(answers))
    text = f"{instruction}\n\n{render_context(answers)}"
    label = f"{request.item_id or request.agent}#combine"
    if index is None:
        messages = [*request.messages, {"role": "user", "content": text}]
        return request.model_copy(update={"messages": messages, "item_id": label})
    return _with_user_text(request, index, text, item_id=label)


def _combine_texts(
    long_input: LongInput,
    answers: list[AgentResult],
    submit: Callable[[CallRequest], Submitted],
    parts: list[AgentResult],
) -> AgentResult:
    """Combine text answers level by level, each call as many answers as fit (at least two)."""
    request = long_input.request
    texts = [output_as_text(a) for a in answers]
    level = 0
    while True:
        level += 1
        groups = _groups(texts, long_input)
        pending = []
        for number, group in enumerate(groups, start=1):
            named = {f"part {i}": text for i, text in enumerate(group, start=1)}
            combine = _combine_request(request, named)
            if len(groups) > 1:
                combine = combine.model_copy(
                    update={"item_id": f"{combine.item_id}-L{level}-G{number}"}
                )
            pending.append(submit(combine))
        results = [_wait(p) for p in pending]
        parts.extend(results)
        if len(results) == 1:
            return results[0]
        texts = [output_as_text(r) for r in results]


def _groups(texts: list[str], long_input: LongInput) -> list[list[str]]:
    """Texts packed in order into groups that fit one combine call (two at least).

    An answer over half the room is cut to half, so any two fit one call.
    """
    counter = long_input.counter
    probe = _combine_request(long_input.request, {"part 1": ""})
    index = _last_user(probe.messages)
    room = long_input._room(index if index is not None else 0) - counter.count(COMBINE_INSTRUCTION)
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    half = max(1, room // 2 - 8)
    for text in texts:
        tokens = counter.count(text)
        if tokens > half:  # an answer longer than max_tokens allows (a server ignoring it)
            text = fitting_prefix(text, half, counter)
            tokens = counter.count(text)
        tokens += 8
        if len(current) >= 2 and used + tokens > room:
            groups.append(current)
            current, used = [], 0
        current.append(text)
        used += tokens
    if current:
        if len(current) == 1 and groups:
            groups[-1].append(current[0])
        else:
            groups.append(current)
    return groups
