"""A plan inside a flow run: the dispatcher loop, per-task bookkeeping, the result."""
