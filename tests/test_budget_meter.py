"""The budget's rule without a server: reserve, settle, wait for calls in flight, refuse."""

from __future__ import annotations

import threading

import pytest

from prefect_fanout.budget.estimate import estimate_call
from prefect_fanout.budget.meter import BudgetMeter
from prefect_fanout.errors import BudgetExhausted, ConfigurationError
from prefect_fanout.llm.request import CallRequest


def request(text: str = "abc " * 40, max_tokens: int = 60, **more: object) -> CallRequest:
    return CallRequest(
        agent="a",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
        **more,
    )


def test_the_estimate_is_chars_over_4_plus_framing_plus_max_tokens() -> None:
    estimate = estimate_call(request())
    assert (estimate.input_tokens, estimate.output_tokens) == (40 + 4, 60)
    assert estimate.tokens == 104 and estimate.tokenizer == "chars/4"
    assert estimate.usd_low is None  # a server that is not OpenAI's, no prices
    priced = estimate_call(request(input_price_per_million=1.0, output_price_per_million=2.0))
    assert priced.usd_low == pytest.approx(44 / 1e6)
    assert priced.usd_high == pytest.approx((44 + 120) / 1e6)


def test_a_call_waits_for_the_calls_in_flight_then_the_budget_is_reached() -> None:
    meter = BudgetMeter(tokens=270)
    first, second = meter.reserve(request()), meter.reserve(request())  # 208 of 270 reserved
    reserved: list[object] = []
    waiting = threading.Thread(
        target=lambda: reserved.append(meter.reserve(request())), daemon=True
    )
    waiting.start()
    meter.settle(first, 60, None)  # spent 60: 60 + 104 + 104 fits in 270 again
    waiting.join(timeout=30)
    assert reserved and meter.in_flight == 2
    meter.settle(second, 60, None)
    meter.settle(reserved[0], 60, None)  # type: ignore[arg-type]
    assert meter.spent_tokens == 180 and meter.in_flight == 0
    with pytest.raises(BudgetExhausted, match="budget of 270 tokens reached"):
        meter.reserve(request())  # 180 + 104 > 270 and nothing in flight
    assert meter.reached
    with pytest.raises(BudgetExhausted):
        meter.reserve(request(max_tokens=1))  # reached is final: nothing starts any more
    report = meter.report(3, 5, 2)
    assert (report.spent_tokens, report.left_tokens, report.skipped) == (180, 90, 2)
    assert report.message == "budget of 270 tokens reached after 3 of 5 calls"


def test_a_budget_below_the_first_call_and_a_dollar_budget_without_a_price() -> None:
    with pytest.raises(ConfigurationError, match="below what the first call needs"):
        BudgetMeter(tokens=100).check_first(request())
    with pytest.raises(ConfigurationError, match="needs a price for model 'm'"):
        BudgetMeter(usd=1.0).check_first(request())
    with pytest.raises(ConfigurationError, match="--budget-name"):
        BudgetMeter.of(None, None, "shared")
    assert BudgetMeter.of(None, None) is None
