"""Every error prefect-fanout raises, and the exit code the ``fanout`` CLI gives it.

Hierarchy (exit code in brackets)::

    FanoutError                        base of everything raised here
    ├── ConfigurationError       [2]   no usable endpoint, unknown agent, bad option or template
    │   ├── TemplateFieldError   [2]   a --prompt template names a field an item lacks
    │   ├── PatternArgumentError [2]   a pattern (fan_out, pipeline, tree...) got a bad argument
    │   └── OutputOwnershipError [2]   the output directory is not this run's to write
    │                                  (prefect_fanout.outputs.ownership)
    ├── PlanValidationError      [2]   a plan has problems (all of them listed, with locations)
    ├── CorpusError              [2]   a corpus file or line cannot be read
    ├── PartitionError           [2]   items cannot be partitioned as asked
    │   └── PartitionSpecError   [2]   a partition spec is malformed
    ├── BudgetExhausted          [3]   a run's token or dollar budget is reached: calls not made
    ├── BatchPendingError        [1]   calls still wait in batches at the provider
    │                                  (prefect_fanout.batch.phase)
    └── AgentCallError           [1]   one agent call failed for good
        ├── NonRetryableAPIError       400/401/403/404/422 or context length: never retried
        │   └── EmptyAnswerError, ContentFilterError, RefusalError (prefect_fanout.llm.answer)
        ├── RetriesExhaustedError      transient failures used up the attempt budget
        │   └── CallTimeoutError       ... and the last one was a timeout (hung call)
        ├── RetryAfterTooLongError     the server asked to wait longer than the cap
        ├── OutputValidationError      structured output still invalid after the re-asks
        │   └── TruncatedOutputError   ... cut at max_tokens with no larger budget allowed
        └── InputTooLongError          the input does not fit the context (long_inputs: fail)

Bad-input errors (exit 2) are also ``ValueError`` subclasses, so code that
caught ``ValueError`` before keeps working. ``except FanoutError`` catches all
of them. :func:`exit_code_for` maps any exception to the CLI's exit code, and
:func:`describe` renders one as the ``Type: message`` line used in results,
rows and logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prefect_fanout.redact import redact

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3


class FanoutError(Exception):
    """Base class of prefect-fanout's own errors.

    Attributes:
        exit_code: The ``fanout`` CLI's exit code for this error.
    """

    exit_code: int = EXIT_FAILED


class ConfigurationError(FanoutError, ValueError):
    """The configuration cannot work: no endpoint, an unknown agent, a bad option."""

    exit_code = EXIT_USAGE


class TemplateFieldError(ConfigurationError):
    """A prompt template is malformed or names a field an item does not have."""


class PatternArgumentError(ConfigurationError):
    """A pattern got an argument it cannot work with; ``argument`` names it.

    Attributes:
        argument: The argument's name, e.g. ``stages``, ``max_depth`` or ``split``.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.message = message

    def __reduce__(self) -> tuple[type[PatternArgumentError], tuple[str, str]]:
        return (type(self), (self.argument, self.message))


class CorpusError(FanoutError, ValueError):
    """A corpus source could not be read; the message names the file (and line)."""

    exit_code = EXIT_USAGE


class PartitionError(FanoutError, ValueError):
    """Items cannot be partitioned as asked (e.g. classifier labels are missing)."""

    exit_code = EXIT_USAGE


class PartitionSpecError(PartitionError):
    """A partition spec is malformed; the message lists the valid forms."""


class _Problem(Protocol):
    def __str__(self) -> str: ...


class PlanValidationError(FanoutError, ValueError):
    """A plan has one or more problems; all of them are in ``problems``.

    ``str(error)`` lists the problems one per line, each prefixed with the
    plan's name, e.g. ``plan.json: tasks[1].dependencies[0]: task 'b' depends
    on unknown task 'zzz'``.

    Attributes:
        problems: Every problem found (``PlanProblem`` objects), in the order found.
        source: The plan's file name, ``"<stdin>"`` or ``"<plan>"``.
    """

    exit_code = EXIT_USAGE

    def __init__(self, problems: Iterable[_Problem], source: str = "<plan>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {problem}" for problem in self.problems)

    def __reduce__(self) -> tuple[type[PlanValidationError], tuple[list[_Problem], str]]:
        return (type(self), (self.problems, self.source))


class BudgetExhausted(FanoutError):
    """The run's budget is reached: the call was not made (``skipped: budget``).

    Raised by the budget when a call's estimate no longer fits (see
    :mod:`prefect_fanout.budget`); the window hands it back as the call's outcome, so
    shapes record the call as skipped, never as failed.
    """

    exit_code = EXIT_BUDGET


class AgentCallError(FanoutError):
    """An agent call failed after everything that could be tried was tried.

    Only the message and attempts are passed to ``Exception`` so the error
    pickles cleanly across processes (Prefect stores it in the failed state).

    Attributes:
        message: What went wrong, naming the call (``agent:item``).
        attempts: HTTP requests made for the call.
        prompt_tokens: Prompt tokens the call's answered asks spent (failed ones included).
        completion_tokens: Completion tokens those asks spent.
        cost_usd: Their cost, None when unknown.
        model: The model the server reported, if it answered at all.
        finish_reason: The last answer's finish reason, if any.
        limit_wait_s: Seconds its requests waited for the endpoint's limits.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, attempts: int = 1) -> None:
        message = redact(message)  # a server may echo the key back
        super().__init__(message, attempts)
        self.message = message
        self.attempts = attempts
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd: float | None = 0.0
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.limit_wait_s = 0.0

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


class TruncatedOutputError(OutputValidationError):
    """A structured answer was cut at ``max_tokens`` and no larger budget was allowed."""


class InputTooLongError(AgentCallError):
    """The input does not fit the model's context; the call was not sent (``long_inputs: fail``).

    Attributes:
        input_tokens: The tokens the input was counted at.
        context_tokens: The context it had to fit, with the answer's ``max_tokens`` in it.
    """

    def __init__(
        self, message: str, attempts: int = 0, input_tokens: int = 0, context_tokens: int = 0
    ) -> None:
        super().__init__(message, attempts)
        self.input_tokens = input_tokens
        self.context_tokens = context_tokens

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.attempts, self.input_tokens, self.context_tokens))


def exit_code_for(error: BaseException) -> int:
    """The CLI exit code of an error: its own for a FanoutError, else 1."""
    return error.exit_code if isinstance(error, FanoutError) else EXIT_FAILED


def describe(error: BaseException | None) -> str:
    """An error as one ``Type: message`` line (for results, rows, traces and logs)."""
    return redact(f"{type(error).__name__}: {error}")
