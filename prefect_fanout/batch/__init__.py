"""Batch mode: a map's uncached calls through the provider's Batch API, durable across crashes.

The pieces, each one job (README "Batch mode"):

- :mod:`~prefect_fanout.batch.api`: the ``/v1/files`` and ``/v1/batches`` calls, with the
  ``openai`` client's own ``files`` and ``batches`` APIs (no Prefect);
- :mod:`~prefect_fanout.batch.lines`: request lines (``custom_id`` = the call's cache key)
  written to input files within the API's limits and ``batch_max_tokens``;
- :mod:`~prefect_fanout.batch.ledger`: every batch recorded as soon as it exists, in
  ``OUTPUT/batches/batches.json`` and a Prefect variable, so a rerun finds it;
- :mod:`~prefect_fanout.batch.poll`: the ``poll-batch`` Prefect task (retries with a growing
  delay; the batch's progress artifact shows its status and request counts);
- :mod:`~prefect_fanout.batch.results`: output lines validated like online answers and
  stored where the online call would have stored them (one cache);
- :mod:`~prefect_fanout.batch.phase`: the batch phase of a map, which ties them together;
- :mod:`~prefect_fanout.batch.check`: bad input refused before anything is uploaded.
"""
