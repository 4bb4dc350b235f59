"""What summaries, results and artifacts show of a run's budget."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["RULE", "BudgetReport"]

RULE = (
    "a call starts only when what the run spent, plus the estimates of its calls in flight, "
    "plus the call's own estimate (input tokens + max_tokens; its highest cost) stay within "
    "the budget; when it does not fit the run waits for its calls in flight, and stops when "
    "none is left"
)
"""The rule a budget applies before each call (README: "Costs: estimate, budget, batch")."""


class BudgetReport(BaseModel):
    """A run's budget: the limits, what was spent, what is left, whether it stopped the run.

    Attributes:
        name: The shared budget's name; None for the run's own.
        tokens: The token budget, if any.
        usd: The dollar budget, if any.
        spent_tokens: Tokens this run spent (prompt + completion, failed asks included).
        spent_usd: USD this run spent; None when a price was unknown.
        left_tokens: Tokens left of the budget (for a named budget: after every run's spend).
        left_usd: USD left of the budget (likewise).
        reached: The budget stopped the run: some calls were not made.
        skipped: Calls not made because of the budget (``skipped: budget``).
        message: ``budget of N tokens reached after K of M calls`` when reached.
        rule: The rule applied before each call.
    """

    name: str | None = None
    tokens: int | None = None
    usd: float | None = None
    spent_tokens: int = 0
    spent_usd: float | None = 0.0
    left_tokens: int | None = None
    left_usd: float | None = None
    reached: bool = False
    skipped: int = 0
    message: str | None = None
    rule: str = RULE

    def left_text(self) -> str:
        """What is left: ``N tokens``, ``$X`` or both."""
        parts = []
        if self.left_tokens is not None:
            parts.append(f"{self.left_tokens} tokens")
        if self.left_usd is not None:
            parts.append(f"${self.left_usd:g}")
        return ", ".join(parts)

    def line(self) -> str:
        """One line for logs, artifacts and the progress artifact."""
        parts = []
        if self.tokens is not None:
            parts.append(f"{self.spent_tokens} of {self.tokens} tokens")
        if self.usd is not None:
            spent = "unknown" if self.spent_usd is None else f"${self.spent_usd:.6f}"
            parts.append(f"{spent} of ${self.usd:g}")
        name = f" ({self.name})" if self.name else ""
        return f"budget{name}: " + ", ".join(parts) + (" - reached" if self.reached else "")
