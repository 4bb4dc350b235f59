"""The exceptions prefect-fanout raises, and the exit codes the CLI maps them to.

Hierarchy::

    FanoutError                      base of everything raised here
    ├── ConfigurationError           no usable endpoint, unknown agent, bad option   (exit 2)
    └── AgentCallError               one agent call failed for good                  (exit 1)
        ├── NonRetryableAPIError     400/401/403/404/422 or context length: never retried
        ├── RetriesExhaustedError    transient failures used up the attempt budget
        │   └── CallTimeoutError     ... and the last one was a timeout (hung call)
        ├── RetryAfterTooLongError   the server asked to wait longer than the cap
        └── OutputValidationError    structured output still invalid after the re-asks

Plan and corpus problems have their own errors (``PlanValidationError``,
``CorpusError``, ``PartitionSpecError``), all ``ValueError`` subclasses, exit 2.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class FanoutError(Exception):
    """Base class of prefect-fanout's own errors."""


class ConfigurationError(FanoutError):
    """The configuration cannot work: no endpoint, an unknown agent, a bad option."""


class AgentCallError(FanoutError):
    """An agent call failed after everything that could be tried was tried.

    Only the message is passed to ``Exception`` so the error pickles cleanly
    across processes (Prefect stores it in the failed state).
    """

    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message, attempts)
        self.message = message
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message


class NonRetryableAPIError(AgentCallError):
    """The API answered with an error that retrying cannot fix."""


class RetriesExhaustedError(AgentCallError):
    """Every attempt of the budget ended in a transient error."""


class CallTimeoutError(RetriesExhaustedError):
    """The call hung past its timeout on the last attempt."""


class RetryAfterTooLongError(AgentCallError):
    """The server asked to retry later than the configured cap allows."""


class OutputValidationError(AgentCallError):
    """The answer did not match the output schema after the allowed re-asks."""
