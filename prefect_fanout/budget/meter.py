"""A run's budget: reserve each call's estimate, settle it with the answer's spend, or refuse.

The rule (:data:`~prefect_fanout.budget.report.RULE`): before a call that the cache does not
answer, its estimate (:func:`~prefect_fanout.budget.estimate.estimate_call`: input tokens plus
``max_tokens``, and its highest cost) is reserved on the budget's counter. It fits when what
was spent plus every reservation in flight plus it stay within the budget. When it does not
fit and calls of this run are in flight, the caller waits for one to finish (its reservation
is replaced by what it really spent, usually less) and tries again; when none is in flight,
the budget is reached: this call and every later one are refused with
:class:`~prefect_fanout.errors.BudgetExhausted`. As long as answers spend no more than their
estimate, a run never spends past its budget. Cache hits are free and never reserve.

Spent is what the ledger counts (:mod:`prefect_fanout.usage`): prompt + completion tokens of
every ask, failed asks included.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from prefect_fanout.budget.counter import Amount, Counter, LocalCounter, micro_usd
from prefect_fanout.budget.estimate import CallEstimate, estimate_call
from prefect_fanout.budget.report import BudgetReport
from prefect_fanout.errors import BudgetExhausted, ConfigurationError
from prefect_fanout.llm.pricing import add_costs
from prefect_fanout.llm.request import CallRequest

__all__ = ["BudgetMeter", "Reservation"]

logger = logging.getLogger("prefect_fanout.budget")

WAIT_SLICE_SECONDS = 5.0
"""How long one wait for a call in flight lasts before the budget looks again."""


@dataclass
class Reservation:
    """One call's reservation: its estimate, held until the call settles."""

    estimate: CallEstimate
    amount: Amount
    settled: bool = False


class BudgetMeter:
    """The budget of one run (or one process's share of a named budget).

    Args:
        tokens: The token budget, or None.
        usd: The dollar budget, or None.
        name: A shared budget's name (then ``counter`` is its server counter).
        counter: Where spend is counted; this process's own by default.
    """

    def __init__(
        self,
        tokens: int | None = None,
        usd: float | None = None,
        *,
        name: str | None = None,
        counter: Counter | None = None,
    ) -> None:
        self.tokens = tokens
        self.usd = usd
        self.name = name
        limits = (tokens, micro_usd(usd) if usd is not None else None)
        self.counter: Counter = counter or LocalCounter(limits)
        self.spent_tokens = 0
        self.spent_usd: float | None = 0.0
        self.in_flight = 0
        self.asked = 0
        self.refused = 0
        self.reached = False
        self._done = threading.Condition()

    @classmethod
    def of(
        cls, tokens: int | None, usd: float | None, name: str | None = None
    ) -> BudgetMeter | None:
        """The meter of a run's budget options; None when no budget is set.

        A named budget is counted on the Prefect server
        (:class:`~prefect_fanout.budget.shared.SharedCounter`).

        Raises:
            ConfigurationError: A name without a token or dollar budget.
        """
        if tokens is None and usd is None:
            if name is not None:
                raise ConfigurationError(
                    f"--budget-name {name}: give the budget too (--budget-tokens or --budget-usd)"
                )
            return None
        counter = None
        if name is not None:
            from prefect_fanout.budget.shared import SharedCounter

            counter = SharedCounter(name, (tokens, micro_usd(usd) if usd is not None else None))
        return cls(tokens, usd, name=name, counter=counter)

    # ------------------------------------------------------------------ before

    def estimate(self, request: CallRequest) -> CallEstimate:
        """A call's estimate, checked for this budget.

        Raises:
            ConfigurationError: A dollar budget and the model's price is unknown.
        """
        estimate = estimate_call(request)
        if self.usd is not None and estimate.usd_high is None:
            raise ConfigurationError(
                f"--budget-usd needs a price for model {request.model!r} at "
                f"{request.base_url}: set the agent's input_price_per_million and "
                "output_price_per_million"
            )
        return estimate

    def check_first(self, request: CallRequest) -> None:
        """Refuse a budget below what one call needs (exit 2 before any call).

        Raises:
            ConfigurationError: The call's estimate alone passes the budget.
        """
        estimate = self.estimate(request)
        if self.tokens is not None and estimate.tokens > self.tokens:
            raise ConfigurationError(
                f"--budget-tokens {self.tokens} is below what the first call needs: about "
                f"{estimate.tokens} tokens ({estimate.input_tokens} in, up to "
                f"{estimate.output_tokens} out: its max_tokens)"
            )
        if self.usd is not None and (estimate.usd_high or 0.0) > self.usd:
            raise ConfigurationError(
                f"--budget-usd {self.usd:g} is below what the first call may cost: up to "
                f"${estimate.usd_high:.6f}"
            )

    def reserve(self, request: CallRequest) -> Reservation:
        """Reserve a call's estimate, waiting for calls in flight while it does not fit.

        Raises:
            BudgetExhausted: The budget is reached (this call is not to be made).
        """
        estimate = self.estimate(request)
        amount = (estimate.tokens, micro_usd(estimate.usd_high))
        with self._done:
            while True:
                if self.reached:
                    self.refused += 1
                    raise BudgetExhausted(self.reason())
                if self.counter.take(amount):
                    self.in_flight += 1
                    self.asked += 1
                    return Reservation(estimate, amount)
                if self.in_flight == 0:
                    self.reached = True
                    continue
                self._done.wait(WAIT_SLICE_SECONDS)

    # ------------------------------------------------------------------- after

    def settle(self, reservation: Reservation, tokens: int, usd: float | None) -> None:
        """A reserved call finished: count what it spent, give back the rest of its reservation.

        Args:
            reservation: From :meth:`reserve`.
            tokens: Prompt + completion tokens its asks spent (0 for a cache hit).
            usd: Their cost; None when unknown (its estimate's highest cost is counted).
        """
        with self._done:
            if reservation.settled:
                return
            reservation.settled = True
            counted = usd if usd is not None else reservation.estimate.usd_high
            spent = (tokens, micro_usd(counted))
            held = reservation.amount
            back = (max(0, held[0] - spent[0]), max(0, held[1] - spent[1]))
            over = (max(0, spent[0] - held[0]), max(0, spent[1] - held[1]))
            try:
                self.counter.give_back(back)
                self.counter.add(over)
            except Exception as exc:  # a shared counter keeps the whole reservation: safe
                logger.warning("budget: could not settle a call on its counter: %s", exc)
            finally:
                self.spent_tokens += tokens
                self.spent_usd = add_costs(self.spent_usd, usd)
                self.in_flight -= 1
                self._done.notify_all()

    def cancel(self, reservation: Reservation) -> None:
        """A reserved call was never submitted: give its whole reservation back."""
        with self._done:
            if reservation.settled:
                return
            reservation.settled = True
            self.asked -= 1
            self.counter.give_back(reservation.amount)
            self.in_flight -= 1
            self._done.notify_all()

    # ----------------------------------------------------------------- reports

    def limit_text(self) -> str:
        """``N tokens``, ``$X`` or both."""
        parts = []
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        if self.usd is not None:
            parts.append(f"${self.usd:g}")
        return " and ".join(parts)

    def progress_line(self) -> str:
        """Spend against the budget while the run goes (the progress artifact's note)."""
        parts = []
        if self.tokens is not None:
            parts.append(f"{self.spent_tokens} of {self.tokens} tokens")
        if self.usd is not None:
            spent = "unknown" if self.spent_usd is None else f"${self.spent_usd:.4f}"
            parts.append(f"{spent} of ${self.usd:g}")
        state = ", reached" if self.reached else f", {self.in_flight} call(s) in flight"
        return "spent " + " and ".join(parts) + state

    def reason(self) -> str:
        """Why a call is not made."""
        name = f" {self.name!r}" if self.name else ""
        return f"budget{name} of {self.limit_text()} reached"

    def report(self, made: int, total: int, skipped: int) -> BudgetReport:
        """The budget as summaries show it.

        Args:
            made: Calls made (answered, failed or cache hits).
            total: Calls the run had in all.
            skipped: Calls not made because of the budget.
        """
        used = self.counter.used()
        left_tokens = left_usd = None
        if self.tokens is not None:
            left_tokens = max(0, self.tokens - (used[0] if used else self.spent_tokens))
        if self.usd is not None:
            spent_micro = used[1] if used else micro_usd(self.spent_usd)
            left_usd = max(0.0, round(self.usd - spent_micro / 1e6, 6))
        reached = self.reached or skipped > 0
        return BudgetReport(
            name=self.name,
            tokens=self.tokens,
            usd=self.usd,
            spent_tokens=self.spent_tokens,
            spent_usd=self.spent_usd,
            left_tokens=left_tokens,
            left_usd=left_usd,
            reached=reached,
            skipped=skipped,
            message=f"{self.reason()} after {made} of {total} calls" if reached else None,
        )
