"""The shipped flows, one module each, so a command imports (and builds) only its own.

Prefect builds a flow's parameter schema when the flow is defined (about 30 ms for a flow
taking :class:`~prefect_fanout.options.RunOptions`); ``fanout map`` imports
:mod:`prefect_fanout.shipped.map` alone. :mod:`prefect_fanout.flows` gathers every shipped
flow and stays the deployments' entrypoint module.
"""
