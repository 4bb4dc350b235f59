"""``fanout dispatch --dry-run``: every call of a plan, looked up in the cache, counted and priced.

Level by level (a task's level is the longest chain of dependencies before it), each task's
call is built as the run would build it. A task whose upstream answers are all in the cache
gets its real prompt (the upstream results rendered in) and is looked up too; a task with an
upstream that would be asked cannot be known yet: it is counted as a call to ask, estimated
from its template (the prompt without the upstream results), and the report says so. The
primary agent of each task is counted (fallbacks only run after a failure); judge and
revision calls of acceptance criteria and the synthesis's upstream results are not known
before the run.
"""

from __future__ import annotations

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.budget.dryrun import DryRun
from prefect_fanout.budget.estimate import estimate_call
from prefect_fanout.call.cache import stored_answer
from prefect_fanout.dispatch.loop import SYNTHESIS_ID, SYNTHESIS_PROMPT
from prefect_fanout.dispatch.prompts import task_request
from prefect_fanout.dispatch.result import DISPATCH_TAG
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.plan.model import Plan, dependency_levels

__all__ = ["dry_run_plan"]


def dry_run_plan(plan: Plan, resolver: Resolver) -> DryRun:
    """The dry run of a checked plan (no request is made).

    Args:
        plan: A validated plan.
        resolver: Its resolver from :func:`~prefect_fanout.dispatch.run.check_plan`.

    Returns:
        The calls, cache hits, calls to ask, tokens and cost, per plan level.
    """
    options = resolver.options
    cache = options.cache_options()
    report = DryRun(
        key="total",
        kind="dispatch",
        level="plan level",
        budget_tokens=options.budget_tokens,
        budget_usd=options.budget_usd,
    )
    answers: dict[str, AgentResult | None] = {}
    for number, level in enumerate(dependency_levels(plan)):
        for task_id in level:
            task = plan.task(task_id)
            request = task_request(resolver, task, task.agent)
            upstream = [answers.get(dep) for dep in task.dependencies]
            if any(answer is None for answer in upstream):
                answers[task_id] = None
                report.count(
                    f"level {number}",
                    estimate_call(request),
                    model=request.model,
                    from_template=True,
                )
                continue
            answered = request.with_context(dict(zip(task.dependencies, upstream, strict=True)))
            hit = stored_answer(answered, cache)
            answers[task_id] = hit
            estimate = None if hit else estimate_call(answered)
            report.count(f"level {number}", estimate, model=request.model)
    if plan.config.synthesize:
        request = resolver.request(
            plan.goal or SYNTHESIS_PROMPT,
            agent=plan.config.synthesize,
            item_id=SYNTHESIS_ID,
            tags=(DISPATCH_TAG,),
        )
        context = {task.task_id: answers.get(task.task_id) for task in plan.tasks}
        if any(answer is None for answer in context.values()):
            report.count(
                SYNTHESIS_ID, estimate_call(request), model=request.model, from_template=True
            )
        else:
            answered = request.with_context(context)
            hit = stored_answer(answered, cache)
            report.count(
                SYNTHESIS_ID, None if hit else estimate_call(answered), model=request.model
            )
    if report.from_template:
        report.notes.append(
            "tasks whose upstream answers are not cached: their prompts are not known before "
            "the run; estimated from the template (without the upstream results)"
        )
    if any(task.acceptance for task in plan.tasks):
        report.notes.append(
            "acceptance criteria: judge and revision calls depend on the answers and are "
            "not counted"
        )
    report.notes.append("batch prices: batch mode runs maps only (fanout map --batch)")
    return report
