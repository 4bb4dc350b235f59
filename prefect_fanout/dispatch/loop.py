"""The event loop behind :func:`prefect_fanout.dispatch.run.run_plan`.

One :class:`Dispatcher` runs one plan inside the current flow run. It keeps a
small record per task (:class:`TaskRun`), submits ready tasks, waits for the
next call to finish, tries fallbacks, applies the failure policy, writes trace
files and, at the end, publishes the run's artifacts.
"""

from __future__ import annotations

import heapq
import time
from functools import partial
from pathlib import Path

from prefect.context import FlowRunContext

from prefect_fanout.bounded import now_or_by_the_end
from prefect_fanout.call.path import CallPath
from prefect_fanout.call.window import CallOutcome, CallWindow
from prefect_fanout.dispatch.acceptance import AcceptanceLoop
from prefect_fanout.dispatch.prompts import task_prompt, task_request
from prefect_fanout.dispatch.result import (
    BUDGET_SKIP,
    DISPATCH_TAG,
    DispatchResult,
    TaskOutcome,
    build_result,
    call_record,
    with_budget,
    with_synthesis,
)
from prefect_fanout.dispatch.taskrun import TaskRun
from prefect_fanout.engine.run import Engine
from prefect_fanout.errors import AgentCallError, describe
from prefect_fanout.files import write_json_atomic
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.plan import graph as plan_graph
from prefect_fanout.plan.model import Plan, TaskSpec
from prefect_fanout.ui.failures import publish_failures
from prefect_fanout.ui.progress import ProgressReporter
from prefect_fanout.ui.traces import trace_file_names, write_index
from prefect_fanout.usage import CallRecord, Usage

SYNTHESIS_ID = "synthesize"
DEFAULT_PLAN_WORKERS = 4
"""Tasks in flight at most when neither the options nor the plan say."""
SYNTHESIS_PROMPT = "Synthesize the results of the tasks below into one coherent final answer."


class Dispatcher:
    """Runs one plan inside the current flow run.

    The run's :class:`~prefect_fanout.engine.run.Engine` makes the calls (its call path and
    window), holds the failure policy, publishes the artifacts and gives the final state; the
    dispatcher adds what a plan needs: dependencies, fallbacks, acceptance and traces.

    Args:
        plan: The validated plan.
        path: The run's call path, whose options are the run's merged options (the plan's
            ``config`` included, see :func:`~prefect_fanout.dispatch.run.check_plan`).

    """

    def __init__(self, plan: Plan, *, path: CallPath) -> None:
        self.plan = plan
        self.engine = Engine("dispatch", path, default_workers=DEFAULT_PLAN_WORKERS)
        self.path = path
        self.resolver = path.resolver
        self.options = path.options
        self.logger = self.engine.logger
        context = FlowRunContext.get()
        self.flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
        self.runs = {
            task.task_id: TaskRun(task, revision_limit=task.revision_limit(plan.config))
            for task in plan.tasks
        }
        self.acceptance = AcceptanceLoop(self, complete=self._complete, fail=self._fail)
        # Ready tasks in plan order, kept as a heap of plan positions: each step costs
        # O(log n), so a 10,000-task plan is not rescanned after every call.
        self.position = {task.task_id: i for i, task in enumerate(plan.tasks)}
        self.unmet = {task.task_id: len(set(task.dependencies)) for task in plan.tasks}
        self.children = plan_graph.dependants_map(plan.dependency_graph())
        self.ready = [self.position[t] for t, n in self.unmet.items() if n == 0]
        heapq.heapify(self.ready)
        self.window: CallWindow[str] = self.engine.window
        self.stopped_by: str | None = None
        self.budget_stopped: str | None = None  # why the budget stopped the run
        trace_dir = self.options.trace_dir
        self.trace_dir = Path(trace_dir).expanduser() if trace_dir else None
        self.trace_names = trace_file_names(plan.task_ids)
        self.progress: ProgressReporter | None = None
        self.synthesis_model: str | None = None

    # ------------------------------------------------------------------ the loop

    def run(self) -> DispatchResult:
        """Run every task and return the result."""
        started = time.time()
        config = self.plan.config
        self.logger.info(
            "dispatching %d task(s): max_workers=%d, failure_policy=%s, timeout=%gs",
            len(self.runs),
            self.engine.workers,
            self.engine.failure_policy,
            self.options.timeout_seconds or config.timeout_seconds,
        )
        meter = self.path.budget
        self.progress = ProgressReporter(
            len(self.runs),
            "fanout dispatch",
            note=meter.progress_line if meter is not None else None,
        )
        while True:
            self._submit_ready()
            if self.window.in_flight == 0:
                break
            self._collect(self.window.next_finished())
        for run in self.runs.values():  # nothing should be left, but never leave it pending
            if run.status == "pending":
                self._skip(run, "not started: its dependencies never completed")
        self.progress.finish()
        outcomes = [run.outcome() for run in self.runs.values()]
        result = build_result(
            outcomes, failure_policy=self.engine.failure_policy, flow_run_id=self.flow_run_id
        )
        if config.synthesize:
            result = with_synthesis(result, self._synthesize(config.synthesize))
        if meter is not None:
            result = with_budget(result, meter)
        if self.trace_dir is not None:
            index = self._write_index(result, started)
            result = result.model_copy(update={"trace_index": str(index)})
        self._publish(result)
        self.logger.info(
            "dispatch %s: %d completed, %d failed, %d skipped, %d from cache",
            result.status,
            result.summary.completed,
            result.summary.failed,
            result.summary.skipped,
            result.summary.cached,
        )
        return result

    def _synthesize(self, agent: str) -> TaskOutcome:
        """The synthesis call: every completed task's output in, the final answer out."""
        done = [run for run in self.runs.values() if run.status == "completed"]
        if self.budget_stopped is not None:
            reason = f"{BUDGET_SKIP}{self.budget_stopped}"
            return TaskOutcome(task_id=SYNTHESIS_ID, agent=agent, status="skipped", error=reason)
        if self.stopped_by is not None or not done:
            reason = "not started: " + (
                f"task {self.stopped_by!r} failed" if self.stopped_by else "no task completed"
            )
            return TaskOutcome(task_id=SYNTHESIS_ID, agent=agent, status="skipped", error=reason)
        started = time.monotonic()
        try:
            request = self.path.request(
                self.plan.goal or SYNTHESIS_PROMPT,
                agent=agent,
                item_id=SYNTHESIS_ID,
                tags=(DISPATCH_TAG,),
            )
            self.resolver.transport(request.model)  # fails here, not in the window
        except Exception as exc:  # the agent vanished since validation
            return TaskOutcome(
                task_id=SYNTHESIS_ID, agent=agent, status="failed", error=describe(exc)
            )
        context = {run.spec.task_id: run.future or run.result for run in done}
        self.window.submit(SYNTHESIS_ID, partial(self.path.submit, request, context=context))
        outcome = self.window.next_finished()
        duration = round(time.monotonic() - started, 6)
        if outcome.over_budget:
            reason = f"{BUDGET_SKIP}{outcome.error}"
            return TaskOutcome(task_id=SYNTHESIS_ID, agent=agent, status="skipped", error=reason)
        if outcome.result is None:
            error = outcome.error
            self.logger.error("synthesis by %r failed: %s", agent, describe(error))
            return TaskOutcome(
                task_id=SYNTHESIS_ID,
                agent=agent,
                status="failed",
                error=describe(error),
                attempts=error.attempts if isinstance(error, AgentCallError) else 0,
                duration_s=duration,
            )
        answer = outcome.result
        self.synthesis_model = answer.model
        return TaskOutcome(
            task_id=SYNTHESIS_ID,
            agent=agent,
            status="completed",
            output=answer.output,
            cached=answer.cached,
            attempts=0 if answer.cached else answer.attempts,
            usage=Usage(
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                cost_usd=answer.run_cost_usd,
            ),
            duration_s=duration,
            limit_wait_s=0.0 if answer.cached else answer.limit_wait_s,
            endpoint=answer.endpoint,
        )

    def _submit_ready(self) -> None:
        if self.stopped_by is not None or self.budget_stopped is not None:
            return
        while self.ready and self.window.has_room:
            run = self.runs[self.plan.tasks[heapq.heappop(self.ready)].task_id]
            if run.status == "pending":
                self._start(run)

    def _unlock(self, run: TaskRun) -> None:
        """A task completed: its dependants whose dependencies all completed become ready."""
        for child in self.children[run.spec.task_id]:
            self.unmet[child] -= 1
            if self.unmet[child] == 0:
                heapq.heappush(self.ready, self.position[child])

    def _start(self, run: TaskRun) -> None:
        run.status = "running"
        run.started = time.time()
        run.started_mono = time.monotonic()
        try:
            run.chain = self.resolver.fallback_chain(run.spec.agent)
        except Exception as exc:  # the agent vanished since validation (a deleted block)
            run.chain = [run.spec.agent]
            self._record_attempt(run, run.spec.agent, None, "failed", describe(exc), 0)
            self._fail(run)
            return
        self._try_agent(run)

    def _try_agent(self, run: TaskRun) -> None:
        """Submit the call of ``run.chain[run.step]``, moving on down the chain on config errors."""
        while run.step < len(run.chain):
            agent = run.chain[run.step]
            run.attempt_started = time.monotonic()
            try:
                request = self._request(run.spec, agent)
                self.resolver.transport(request.model)  # fails here, not in the window
            except Exception as exc:  # an unknown fallback, a bad template, no endpoint
                self._record_attempt(run, agent, None, "failed", describe(exc), 0)
                if not self._may_fall_back(run):
                    break
                continue
            upstream = {dep: self.runs[dep] for dep in run.spec.dependencies}
            run.request = request.with_context({d: u.result for d, u in upstream.items()})
            # Upstream futures draw the edges in the UI; a reused (cached) upstream has none.
            context = {d: u.future or u.result for d, u in upstream.items()} or None
            submit = partial(self.path.submit, request, context=context, answered=run.request)
            self.window.submit(run.spec.task_id, submit)
            return
        self._fail(run)

    def _request(self, task: TaskSpec, agent: str) -> CallRequest:
        return task_request(self.resolver, task, agent)  # the checks built its first one

    def _may_fall_back(self, run: TaskRun) -> bool:
        """Move to the next agent of the chain, if there is one and the run goes on."""
        if self.stopped_by is not None or run.step + 1 >= len(run.chain):
            return False
        run.step += 1
        self.logger.warning(
            "task %r: agent %r failed; trying fallback agent %r",
            run.spec.task_id,
            run.chain[run.step - 1],
            run.chain[run.step],
        )
        return True

    def _collect(self, done: CallOutcome[str]) -> None:
        run = self.runs[done.key]
        if done.over_budget:  # the call was not made: the budget stops the run here
            self._stop_for_budget(run, str(done.error))
            return
        if run.phase != "answer":  # a judge or revision call of the acceptance loop
            self.acceptance.collect(run, done)
            return
        agent = run.chain[run.step]
        model = run.request.model if run.request else None
        if done.result is None:  # the call failed for good (after its own retries)
            error = done.error
            requests = error.attempts if isinstance(error, AgentCallError) else 0
            self._record_attempt(
                run,
                agent,
                getattr(error, "model", None) or model,
                "failed",
                describe(error),
                requests,
                usage=(
                    getattr(error, "prompt_tokens", 0),
                    getattr(error, "completion_tokens", 0),
                    getattr(error, "cost_usd", 0.0),
                ),
                finish_reason=getattr(error, "finish_reason", None),
            )
            run.attempts[-1]["limit_wait_s"] = getattr(error, "limit_wait_s", 0.0)
            if self._may_fall_back(run):
                self._try_agent(run)
            else:
                self._fail(run)
            return
        result, future = done.result, done.future
        requests = 0 if result.cached else result.attempts
        self._record_attempt(
            run,
            agent,
            result.model,
            "completed",
            None,
            requests,
            result.cached,
            finish_reason=result.finish_reason,
        )
        if result.finish_reason == "length":
            self.logger.warning(
                "task %r: the answer was cut at max_tokens (finish_reason=length)",
                run.spec.task_id,
            )
        run.future, run.result = future, result
        if run.spec.acceptance is not None:  # the answer completes the task once judged
            self.acceptance.judge(run)
            return
        self._complete(run)

    def _complete(self, run: TaskRun) -> None:
        """Complete a task with its answer (``run.result``, ``run.future``)."""
        assert run.result is not None
        run.status = "completed"
        self._finish(run)
        self._unlock(run)
        self.logger.info(
            "task %r completed by %r%s in %.2fs",
            run.spec.task_id,
            run.agent,
            " (from cache)" if run.result.cached else "",
            run.duration_s or 0.0,
        )

    def _record_attempt(
        self,
        run: TaskRun,
        agent: str,
        model: str | None,
        status: str,
        error: str | None,
        requests: int,
        cached: bool = False,
        usage: tuple[int, int, float | None] | None = None,
        finish_reason: str | None = None,
    ) -> None:
        began = run.attempt_started or run.started_mono or time.monotonic()
        prompt_tokens, completion_tokens, cost = usage or (0, 0, 0.0)
        run.attempts.append(
            {
                "agent": agent,
                "model": model,
                "status": status,
                "error": error,
                "requests": requests,
                "cached": cached,
                "finish_reason": finish_reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost,
                "duration_s": round(time.monotonic() - began, 6),
            }
        )

    # ------------------------------------------------------------ final statuses

    def _finish(self, run: TaskRun) -> None:
        run.finished = time.time()
        if run.started_mono is not None:
            run.duration_s = round(time.monotonic() - run.started_mono, 6)
        if self.progress is not None:
            self.progress.advance(failed=run.status != "completed")
        self._write_trace(run)

    def _fail(self, run: TaskRun) -> None:
        failures = [a for a in run.attempts if a["status"] == "failed"]
        if run.phase != "answer":  # the acceptance loop set the error (a verdict, a failed call)
            assert run.error is not None
        elif len(failures) == 1:
            run.error = failures[0]["error"]
        else:
            run.error = "; ".join(f"agent {a['agent']!r}: {a['error']}" for a in failures)
        run.status = "failed"
        self._finish(run)
        task_id = run.spec.task_id
        self.logger.error("task %r failed: %s", task_id, run.error)
        if self.engine.failure_policy == "all_or_nothing":
            if self.stopped_by is None:
                self.stopped_by = task_id
                reason = f"not started: task {task_id!r} failed (failure_policy all_or_nothing)"
                for other in self.runs.values():
                    if other.status == "pending":
                        self._skip(other, reason)
            return
        for dependant in self.plan.dependants(task_id):
            if self.runs[dependant].status == "pending":
                self._skip(self.runs[dependant], f"skipped: upstream task {task_id!r} failed")

    def _stop_for_budget(self, run: TaskRun, why: str) -> None:
        """The budget refused ``run``'s call: it and every task not started are skipped.

        Calls in flight finish and are kept; nothing new starts.
        """
        if self.budget_stopped is None:
            self.budget_stopped = why
            self.logger.warning("dispatch: %s; no new task starts", why)
        reason = f"{BUDGET_SKIP}{why}"
        self._skip(run, reason)
        for other in self.runs.values():
            if other.status == "pending":
                self._skip(other, reason)

    def _skip(self, run: TaskRun, reason: str) -> None:
        run.status, run.error = "skipped", reason
        self.logger.warning("task %r %s", run.spec.task_id, reason)
        self._finish(run)

    # ------------------------------------------------------ traces and artifacts

    def _write_trace(self, run: TaskRun) -> None:
        if self.trace_dir is None:
            return
        path = self.trace_dir / self.trace_names[run.spec.task_id]
        try:
            run.trace = str(write_json_atomic(path, run.trace_record(self.flow_run_id)))
        except OSError as exc:  # a full disk must not lose the run's result
            self.logger.error("cannot write trace %s: %s", path, exc)

    def _write_index(self, result: DispatchResult, started: float) -> Path:
        assert self.trace_dir is not None
        tasks = [run.index_entry() for run in self.runs.values()]
        return write_index(
            self.trace_dir,
            flow_run_id=self.flow_run_id,
            status=result.status,
            summary=result.summary.model_dump(),
            usage=result.usage.model_dump(),
            config=self.effective_config(),
            tasks=tasks,
            started=started,
            finished=time.time(),
        )

    def _publish(self, result: DispatchResult) -> None:
        records = [
            call_record(outcome, run.result.model if run.result else None)
            for outcome, run in zip(result.tasks, self.runs.values(), strict=True)
        ]
        if result.synthesis is not None:
            records.append(call_record(result.synthesis, self.synthesis_model))
        links: dict[str, Path] = {}
        if result.trace_index:
            links = {run.spec.task_id: Path(run.trace) for run in self.runs.values() if run.trace}
            links["dispatch-index"] = Path(result.trace_index)
        extra: dict[str, object] = {
            "Status": result.status,
            "Failure policy": self.engine.failure_policy,
            "Max workers": self.engine.workers,
        }
        if result.budget is not None:
            extra["Budget"] = result.budget.line()
            extra["Budget left"] = result.budget.left_text()
        judged = [outcome.acceptance for outcome in result.tasks if outcome.acceptance]
        if judged:
            accepted = sum(1 for record in judged if record.accepted)
            extra["Revisions"] = sum(record.revisions for record in judged)
            extra["Judged tasks"] = f"{len(judged)} ({accepted} accepted)"
        self.engine.publish("Fanout dispatch", records, extra, links)
        specs = {run.spec.task_id: run.spec for run in self.runs.values()}
        now_or_by_the_end(self._publish_failures, records, specs)

    def _publish_failures(self, records: list[CallRecord], specs: dict[str, TaskSpec]) -> None:
        try:  # failures readable in the UI, not only through file:// trace links
            publish_failures(
                "dispatch",
                "Fanout dispatch",
                records,
                lambda r: task_prompt(specs[r.id]) if r.id in specs else None,
            )
        except Exception as exc:
            self.logger.warning("could not publish the failures artifact: %s", exc)

    def effective_config(self) -> dict[str, object]:
        """The plan's ``config`` with the run's effective settings, for the trace index."""
        return {
            **self.plan.config.model_dump(mode="json"),
            "max_workers": self.engine.workers,
            "failure_policy": self.engine.failure_policy,
            "trace_dir": self.options.trace_dir,
            "timeout_seconds": self.options.timeout_seconds or self.plan.config.timeout_seconds,
            **self.options.limits(),
        }
