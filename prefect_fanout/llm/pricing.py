"""Token prices and the cost of a call.

Prices are USD per million tokens (input, output) from OpenAI's public price
list for common models. The table prices only calls answered at OpenAI's own
base URL (a local server that answers to ``gpt-4o-mini`` is not OpenAI); any other
endpoint's calls have a cost only with explicit prices. An unknown model has no
price: its cost is ``None``, never a made-up zero. A profile's own prices
override the table.
"""

from __future__ import annotations

from prefect_fanout.llm.endpoints import OPENAI_BASE_URL
from prefect_fanout.llm.testmodel import TEST_BASE_URL

TABLE_BASE_URLS = frozenset({OPENAI_BASE_URL, TEST_BASE_URL})
"""Base URLs whose calls the price table prices (OpenAI's, and the offline ``test`` model)."""


def table_applies(base_url: str | None) -> bool:
    """True when the price table prices calls made at ``base_url`` (None: unknown, yes)."""
    return base_url is None or base_url.rstrip("/") in TABLE_BASE_URLS


PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    # The built-in offline model costs nothing, truly.
    "test": (0.0, 0.0),
}


def price_for(model: str) -> tuple[float, float] | None:
    """The (input, output) price per million tokens of a model, or None if unknown.

    Dated snapshots such as ``gpt-4o-2024-08-06`` take the price of the longest
    table name they start with, so ``gpt-4o-mini-...`` is never priced as ``gpt-4o``.
    """
    name = model.lower().split("/")[-1]
    if name in PRICES_PER_MILLION:
        return PRICES_PER_MILLION[name]
    best = None
    for known in PRICES_PER_MILLION:
        if name.startswith(known + "-") and (best is None or len(known) > len(best)):
            best = known
    return PRICES_PER_MILLION[best] if best else None


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    input_price: float | None = None,
    output_price: float | None = None,
    base_url: str | None = None,
) -> float | None:
    """The cost of a call in USD, or None when the model's price is unknown.

    Args:
        model: The model that answered.
        prompt_tokens: Tokens sent.
        completion_tokens: Tokens received.
        input_price: USD per million prompt tokens, overriding the table.
        output_price: USD per million completion tokens, overriding the table.
        base_url: Where the call was made; the table prices only OpenAI's
            (see :func:`table_applies`), None means no check.

    """
    table = price_for(model) if table_applies(base_url) else None
    if input_price is None or output_price is None:
        if table is None:
            return None
        input_price = table[0] if input_price is None else input_price
        output_price = table[1] if output_price is None else output_price
    return round((prompt_tokens * input_price + completion_tokens * output_price) / 1e6, 10)


def add_costs(total: float | None, cost: float | None) -> float | None:
    """Add a cost to a total; unknown (None) stays unknown."""
    if total is None or cost is None:
        return None
    return round(total + cost, 10)


BATCH_PRICE_FACTOR = 0.5
"""Batch API prices are half the online prices (OpenAI's, and the providers that copy it)."""


def batch_cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    input_price: float | None = None,
    output_price: float | None = None,
    base_url: str | None = None,
    batch_prices: tuple[float | None, float | None] = (None, None),
) -> float | None:
    """The cost of a call answered through the Batch API.

    An agent's own batch prices (``batch_prices``: USD per million prompt and completion
    tokens, both set) price it; otherwise it is half the online cost (:func:`cost_usd`'s
    arguments, an agent's own online prices halved the same way).
    """
    batch_input, batch_output = batch_prices
    if batch_input is not None and batch_output is not None:
        return round((prompt_tokens * batch_input + completion_tokens * batch_output) / 1e6, 10)
    online = cost_usd(model, prompt_tokens, completion_tokens, input_price, output_price, base_url)
    return None if online is None else round(online * BATCH_PRICE_FACTOR, 10)
