"""What a run may touch in its output directory: the manifest, the lock and the ownership checks.

- :mod:`~prefect_fanout.outputs.manifest`: ``.fanout-manifest.json``, the files fanout wrote.
- :mod:`~prefect_fanout.outputs.lock`: ``.fanout.lock``, one run at a time per directory.
- :mod:`~prefect_fanout.outputs.ownership`: the refusals (foreign files, input inside the
  output, another run) and :class:`~prefect_fanout.outputs.ownership.OutputClaim`.
"""

from prefect_fanout.outputs.ownership import (
    OutputClaim,
    OutputOwnershipError,
    check_output_ownership,
    claim_output,
)

__all__ = ["OutputClaim", "OutputOwnershipError", "check_output_ownership", "claim_output"]
