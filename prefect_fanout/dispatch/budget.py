"""A plan's budget before its run: a budget below what its first call needs is exit 2."""

from __future__ import annotations

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.budget.meter import BudgetMeter
from prefect_fanout.call.budgeted import check_first_call
from prefect_fanout.dispatch.prompts import task_request
from prefect_fanout.plan.model import Plan

__all__ = ["check_plan_budget"]


def check_plan_budget(plan: Plan, resolver: Resolver) -> None:
    """Refuse a budget below what the plan's first call to ask needs (before any call).

    The first calls are the tasks without dependencies, in plan order; the first one the
    cache does not answer is checked.

    Raises:
        ConfigurationError: The budget is below that call's estimate, or a dollar budget
            meets a model without a price.
    """
    options = resolver.options
    meter = BudgetMeter.of(options.budget_tokens, options.budget_usd, options.budget_name)
    if meter is None:
        return
    roots = (task for task in plan.tasks if not task.dependencies)
    requests = (task_request(resolver, task, task.agent) for task in roots)
    check_first_call(meter, requests, options.cache_options())
