"""The one engine under every shape: calls in a window, records, the failure policy, the end.

:class:`~prefect_fanout.engine.run.Engine` runs the calls of a dispatch, a pattern or a tree
reduce through the run's :class:`~prefect_fanout.call.path.CallPath` and
:class:`~prefect_fanout.call.window.CallWindow` (which holds the recording brake), keeps one
:class:`~prefect_fanout.usage.CallRecord` per call, applies the failure policy, publishes the
run's artifacts and gives the flow run its final state (``Completed``, ``Partial`` or ``Failed``).
"""
