"""The wire: plain HTTP to model servers, with no Prefect tasks here.

A request and its cache key (:mod:`~prefect_fanout.llm.request`), the endpoint it goes to
(:mod:`~prefect_fanout.llm.endpoints`), the transports that send it (the ``openai`` client, or
the offline ``test`` model; :mod:`~prefect_fanout.llm.transport`), retries
(:mod:`~prefect_fanout.llm.retry`), asking, validating and re-asking
(:mod:`~prefect_fanout.llm.execute`), prices (:mod:`~prefect_fanout.llm.pricing`) and the
answer (:mod:`~prefect_fanout.llm.result`). The Prefect task that wraps a call lives one layer
up, in :mod:`prefect_fanout.call`.
"""
