"""Know the bill before paying it: per-call estimates, dry-run counts and run budgets.

- :mod:`~prefect_fanout.budget.estimate`: what one call may spend before it is sent (input
  tokens by a real tokenizer where one is installed, else the limiter's estimate; output
  bounded by ``max_tokens``; the cost range from the model's prices);
- :mod:`~prefect_fanout.budget.meter`: a run's budget: reserves each call's estimate before
  it starts, settles it with what the answer spent, and refuses a call that could take the
  spend past the budget (:class:`~prefect_fanout.errors.BudgetExhausted`);
- :mod:`~prefect_fanout.budget.shared`: a budget shared by several runs by name, held on the
  Prefect server as a global concurrency limit without decay used as a counter;
- :mod:`~prefect_fanout.budget.report`: what summaries and results show of it;
- :mod:`~prefect_fanout.budget.dryrun`: the dry-run report of a map or a plan.
"""
