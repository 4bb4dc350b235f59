"""The one engine under every shape: calls in a window, records, the failure policy, the end.

:class:`~prefect_fanout.engine.run.Engine` runs the calls of a dispatch, a pattern, a map's
classifier, each part of a map's partitions and the tree reduce through the run's
:class:`~prefect_fanout.call.path.CallPath` and
:class:`~prefect_fanout.call.window.CallWindow` (which holds the recording brake), keeps one
:class:`~prefect_fanout.usage.CallRecord` per call, applies the failure policy, publishes the
run's artifacts and gives the flow run its final state (``Completed``, ``Partial`` or ``Failed``).
Over ``calls_per_run`` calls it runs them in child flow runs; on Dask or Ray it sends them to the
workers in chunks. A shape that keeps its own books (the map's classifier and partitions) gets
each outcome through ``on_outcome`` instead of the engine's records and failure policy.
"""
