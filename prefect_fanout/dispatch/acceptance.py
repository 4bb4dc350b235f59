"""Acceptance criteria of plan tasks: a judge checks each answer, rejected answers are revised.

A task with ``acceptance`` (a list of criteria) and a ``judge`` agent runs a
small loop inside the dispatch (seed 002's "set clear acceptance criteria" and
"re-prompt with the error context")::

    AGENT:TASK            the answer (with the criteria in its prompt)
    JUDGE:TASK#judge      the judge's verdict: {"pass": bool, "unmet": [...], "notes": ...}
    AGENT:TASK#r1         rejected: the task asked again with the unmet criteria
    JUDGE:TASK#r1#judge   the verdict on revision 1
    ...

Every call is its own agent-call task run (the run names above). A passing
verdict completes the task with the answer it judged; a failing verdict is
revised at most ``max_revisions`` times (the task's, else
``config.max_revisions``, default 2), then the task is ``failed`` with the last
verdict. A judge or revision call that fails for good fails the task (no
fallbacks). The verdicts are recorded in the task's
:class:`~prefect_fanout.dispatch.result.Acceptance` (result JSON and trace).

The judge answers in a fixed JSON schema (:data:`VERDICT_SCHEMA`), whatever
its profile's own ``output_schema``; the offline ``test`` model's schema-valid
answer passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from prefect_fanout.call.window import CallOutcome
from prefect_fanout.dispatch.result import DISPATCH_TAG, Verdict
from prefect_fanout.errors import AgentCallError, describe
from prefect_fanout.llm.request import CallRequest, output_as_text
from prefect_fanout.llm.result import AgentResult

if TYPE_CHECKING:
    import logging

    from prefect_fanout.agents.resolver import Resolver
    from prefect_fanout.call.path import CallPath
    from prefect_fanout.call.window import CallWindow
    from prefect_fanout.dispatch.taskrun import TaskRun
    from prefect_fanout.plan.model import Plan


class Dispatcher(Protocol):
    """What the acceptance loop uses of the dispatch that runs it."""

    plan: Plan
    resolver: Resolver
    path: CallPath
    window: CallWindow[str]
    logger: logging.Logger | logging.LoggerAdapter[Any]


VERDICT_SCHEMA: dict[str, Any] = {
    "title": "Verdict",
    "type": "object",
    "properties": {
        "pass": {"type": "boolean", "description": "The answer meets every criterion."},
        "unmet": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The criteria the answer does not meet, copied exactly.",
        },
        "notes": {"type": "string", "description": "What is missing or wrong, briefly."},
    },
    "required": ["pass", "unmet"],
}
"""The JSON schema of a judge's answer."""

JUDGE_INSTRUCTION = (
    'Reply with a JSON object: "pass" (true only if the answer meets every criterion), '
    '"unmet" (the criteria it does not meet, copied exactly; empty when it passes) and '
    '"notes" (what is missing or wrong, briefly).'
)


def criteria_block(criteria: Sequence[str]) -> str:
    """Criteria as the prompts' ``## Acceptance criteria`` list."""
    return "## Acceptance criteria\n" + "\n".join(f"- {c}" for c in criteria)


def judge_prompt(task_id: str, task_prompt: str, criteria: Sequence[str], answer: str) -> str:
    """The judge's user message: the task as asked, its criteria and the answer to judge.

    Args:
        task_id: The task's id.
        task_prompt: The task's prompt as its agent got it (upstream results included).
        criteria: The task's acceptance criteria (added unless the prompt lists them).
        answer: The answer to judge, as text.

    Returns:
        The prompt text.

    """
    block = criteria_block(criteria)
    task = task_prompt if block in task_prompt else f"{task_prompt}\n\n{block}"
    return (
        f"Review the answer to task {task_id!r} against its acceptance criteria.\n\n"
        f"## Task\n{task}\n\n## Answer\n{answer}\n\n{JUDGE_INSTRUCTION}"
    )


def revision_prompt(revision: int, limit: int, verdict: Verdict, criteria: Sequence[str]) -> str:
    """The follow-up message that asks for revision ``revision`` of a rejected answer.

    Args:
        revision: The revision's number (1 for the first).
        limit: The most revisions the task may get.
        verdict: The verdict that rejected the answer.
        criteria: Every criterion (listed when the judge named no unmet one).

    Returns:
        The prompt text: the unmet criteria, the judge's notes, the request.

    """
    unmet = verdict.unmet or list(criteria)
    lines = [
        f"## Revision {revision} of at most {limit}",
        "A reviewer found that your answer does not meet these acceptance criteria:",
        *(f"- {criterion}" for criterion in unmet),
    ]
    if verdict.notes:
        lines.append(f"Reviewer notes: {verdict.notes}")
    lines.append("Answer the task again, in full, so that every acceptance criterion is met.")
    return "\n".join(lines)


class AcceptanceLoop:
    """Judges a dispatcher's answers and revises the rejected ones.

    Args:
        dispatcher: The dispatcher whose window, resolver, cache and logger the
            loop's calls use.
        complete: Called with a task run whose answer was accepted.
        fail: Called with a task run that ends ``failed`` (its ``error`` set).

    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        complete: Callable[[TaskRun], None],
        fail: Callable[[TaskRun], None],
    ) -> None:
        self.dispatcher = dispatcher
        self.complete = complete
        self.fail = fail

    def judge(self, run: TaskRun) -> None:
        """Submit the judge call of the run's current answer (``run.result``)."""
        spec, dispatcher = run.spec, self.dispatcher
        assert spec.judge is not None and spec.acceptance is not None and run.result is not None
        if run.acceptance_prompt is None:
            run.acceptance_prompt = run.request.prompt if run.request else ""
        name = (
            f"{spec.task_id}#r{run.revisions}#judge" if run.revisions else f"{spec.task_id}#judge"
        )
        prompt = judge_prompt(
            spec.task_id, run.acceptance_prompt, spec.acceptance, output_as_text(run.result)
        )
        run.phase = "judge"
        run.call_started = time.monotonic()
        try:
            request = dispatcher.path.request(
                prompt,
                agent=spec.judge,
                variables=spec.input_data,
                item_id=name,
                tags=(DISPATCH_TAG,),
            ).model_copy(update={"output_schema": VERDICT_SCHEMA, "output_type": None})
            dispatcher.resolver.transport(request.model)  # fails here, not in the window
        except Exception as exc:  # the judge vanished since validation, a bad template
            self._end(run, f"judge {spec.judge!r} failed: {describe(exc)}", spec.judge, None, exc)
            return
        run.phase_request = request
        self._submit(run, request)

    def collect(self, run: TaskRun, done: CallOutcome[str]) -> None:
        """Handle the finished judge or revision call of ``run``."""
        if run.phase == "judge":
            self._judged(run, done)
        else:
            self._revised(run, done)

    # ------------------------------------------------------------------ helpers

    def _submit(self, run: TaskRun, request: CallRequest) -> None:
        dispatcher = self.dispatcher
        dispatcher.window.submit(run.spec.task_id, partial(dispatcher.path.submit, request))

    def _record(
        self,
        run: TaskRun,
        result: AgentResult | None,
        error: BaseException | None,
        agent: str,
    ) -> None:
        request = run.phase_request
        began = run.call_started or time.monotonic()
        if result is not None:
            run.spent.append(result)
        requests = 0 if result is not None and result.cached else None
        if requests is None:
            requests = result.attempts if result is not None else 0
            if isinstance(error, AgentCallError):
                requests = error.attempts
        run.loop_calls.append(
            {
                "call": run.phase,
                "name": request.label if request else None,
                "revision": run.revisions,
                "agent": agent,
                "model": result.model if result else (request.model if request else None),
                "status": "completed" if result is not None else "failed",
                "error": describe(error) if error is not None else None,
                "requests": requests,
                "cached": bool(result and result.cached),
                "duration_s": round(time.monotonic() - began, 6),
                "prompt": request.prompt if request else None,
                "output": result.output if result else None,
            }
        )

    def _end(
        self,
        run: TaskRun,
        error: str,
        agent: str,
        result: AgentResult | None,
        exc: BaseException | None,
    ) -> None:
        self._record(run, result, exc, agent)
        run.error = error
        self.fail(run)

    def _judged(self, run: TaskRun, done: CallOutcome[str]) -> None:
        spec, logger = run.spec, self.dispatcher.logger
        assert spec.judge is not None and spec.acceptance is not None
        if done.result is None:
            message = f"judge {spec.judge!r} failed: {describe(done.error)}"
            self._end(run, message, spec.judge, None, done.error)
            return
        self._record(run, done.result, None, spec.judge)
        try:
            verdict = Verdict.model_validate(
                {**dict(done.result.output), "revision": run.revisions}
            )
        except (ValidationError, TypeError, ValueError) as exc:  # schema-checked already
            run.error = f"judge {spec.judge!r} gave no verdict: {describe(exc)}"
            self.fail(run)
            return
        run.verdicts.append(verdict)
        if verdict.passed:
            logger.info("task %r: accepted by judge %r", spec.task_id, spec.judge)
            self.complete(run)
            return
        limit = run.revision_limit
        unmet = "; ".join(verdict.unmet) or "(none named)"
        if run.revisions >= limit:
            run.error = (
                f"not accepted by judge {spec.judge!r} after {run.revisions} revision(s); "
                f"unmet: {unmet}"
            )
            self.fail(run)
            return
        logger.warning(
            "task %r: judge %r rejected the answer (unmet: %s); asking for revision %d of %d",
            spec.task_id,
            spec.judge,
            unmet,
            run.revisions + 1,
            limit,
        )
        self._revise(run, verdict, limit)

    def _revise(self, run: TaskRun, verdict: Verdict, limit: int) -> None:
        spec, dispatcher = run.spec, self.dispatcher
        assert run.request is not None and run.result is not None and spec.acceptance is not None
        run.revisions += 1
        agent = run.chain[run.step] if run.chain else spec.agent
        messages = [
            *run.request.messages,
            {"role": "assistant", "content": output_as_text(run.result)},
            {
                "role": "user",
                "content": revision_prompt(run.revisions, limit, verdict, spec.acceptance),
            },
        ]
        request = run.request.model_copy(
            update={"messages": messages, "item_id": f"{spec.task_id}#r{run.revisions}"}
        )
        run.phase, run.phase_request = "revise", request
        run.call_started = time.monotonic()
        try:
            dispatcher.resolver.transport(request.model)  # fails here, not in the window
        except Exception as exc:  # the endpoint vanished since the first answer
            self._end(run, f"revision {run.revisions} failed: {describe(exc)}", agent, None, exc)
            return
        self._submit(run, request)

    def _revised(self, run: TaskRun, done: CallOutcome[str]) -> None:
        agent = run.chain[run.step] if run.chain else run.spec.agent
        if done.result is None:
            message = f"revision {run.revisions} by {agent!r} failed: {describe(done.error)}"
            self._end(run, message, agent, None, done.error)
            return
        self._record(run, done.result, None, agent)
        run.spent.pop()  # the answer under judgement is the run's result, not spent apart
        if run.result is not None:
            run.spent.append(run.result)  # the rejected answer was paid for
        run.request, run.result, run.future = run.phase_request, done.result, done.future
        self.judge(run)
