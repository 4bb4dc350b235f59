"""Agent profiles: who answers a call, with which model, prompt and limits.

An :class:`AgentProfile` is a pydantic model that is also a Prefect Block, so a
profile can live in code, in a plan file, or as a saved block document that
plans and flows refer to by name.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, PrivateAttr, field_validator

from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.endpoints import DOCS_URL, LOGO_URL
from prefect_fanout.llm.retry import RetryOptions
from prefect_fanout.llm.styles import check_style


class AgentProfile(Block):
    """An LLM agent: model, prompts, sampling, output schema, retries and prices.

    The output schema is a Pydantic model class in Python (``output_schema=MyModel``)
    or a JSON schema dict in files and saved blocks. With a class, answers are
    validated into instances of it; with a JSON schema, into dicts.
    """

    _block_type_name: ClassVar[str] = "Fanout Agent Profile"
    _block_type_slug: ClassVar[str] = "fanout-agent-profile"
    _logo_url: ClassVar[str] = LOGO_URL
    _documentation_url: ClassVar[str] = DOCS_URL
    _code_example: ClassVar[str] = (
        "```python\n"
        "from prefect_fanout import AgentProfile\n\n"
        'profile = AgentProfile.load("BLOCK_NAME")\n'
        "```"
    )

    name: str = Field(
        default="default", description="The agent's name, used in run names and tags."
    )
    model: str | None = Field(
        default=None,
        description="Model name; None uses the endpoint's default model.",
    )
    system_prompt: str = Field(
        default="You are a helpful, precise assistant.",
        description="The system message sent with every call.",
    )
    prompt_template: str | None = Field(
        default=None,
        description=(
            "Optional template for the user message; {input} is the prompt and other "
            "{names} come from the call's variables."
        ),
    )
    temperature: float | None = Field(default=None, description="Sampling temperature.")
    max_tokens: int | None = Field(default=None, description="Maximum completion tokens.")
    max_tokens_limit: int | None = Field(
        default=None,
        description=(
            "Largest max_tokens a structured answer cut at max_tokens may be re-asked with "
            "(the budget doubles per re-ask up to it); None: a cut answer fails at once."
        ),
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Server-specific request parameters sent as is, e.g. {repeat_penalty: 1.3, "
            "top_k: 40, seed: 1}; part of the cache key."
        ),
    )
    structured_output: str | None = Field(
        default=None,
        description=(
            "How a structured answer is asked for: auto, json_schema, json_object+schema, "
            "json_object or none; None uses the endpoint's (auto by default)."
        ),
    )
    merge_system_prompt: bool | None = Field(
        default=None,
        description=(
            "Send the system prompt at the top of the first user message, for chat "
            "templates without a system role; None uses the endpoint's setting."
        ),
    )
    output_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON schema the answer must validate against, or None for plain text.",
    )
    context_tokens: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Tokens one request of this agent may fill (prompt and answer); None uses the "
            "endpoint's, else what the server says."
        ),
    )
    long_inputs: Literal["fail", "truncate", "chunk"] | None = Field(
        default=None,
        description=(
            "An input over the context: fail (the call fails before any request), truncate "
            "(cut to fit, with a warning) or chunk (answered in overlapping chunks, combined); "
            "None: fail, unless the run's long_inputs says otherwise."
        ),
    )
    timeout_seconds: float = Field(
        default=120.0, description="Timeout of one HTTP request, in seconds."
    )
    max_attempts: int = Field(
        default=4,
        ge=1,
        description="HTTP attempts per request, the first included (transient errors only).",
    )
    max_retry_after_seconds: float = Field(
        default=60.0,
        description="Longest Retry-After the call will wait; longer asks fail fast.",
    )
    backoff_initial_seconds: float = Field(
        default=1.0, description="First backoff wait when the server gives no Retry-After."
    )
    backoff_max_seconds: float = Field(default=30.0, description="Longest backoff wait.")
    max_validation_retries: int = Field(
        default=2,
        ge=0,
        description="How many times an invalid structured answer is re-asked.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Agent names tried in order when this agent's call fails for good.",
    )
    input_price_per_million: float | None = Field(
        default=None, description="USD per million prompt tokens; overrides the price table."
    )
    output_price_per_million: float | None = Field(
        default=None, description="USD per million completion tokens; overrides the price table."
    )
    batch_input_price_per_million: float | None = Field(
        default=None,
        ge=0,
        description="USD per million prompt tokens in batch mode; default: half the online price.",
    )
    batch_output_price_per_million: float | None = Field(
        default=None,
        ge=0,
        description="USD per million completion tokens in batch mode; default: half the online "
        "price.",
    )

    _output_type: type[BaseModel] | None = PrivateAttr(default=None)

    _check_style = field_validator("structured_output")(check_style)

    def __init__(self, *args: Any, **data: Any) -> None:
        schema = data.get("output_schema")
        output_type = None
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            output_type = schema
            data["output_schema"] = schema.model_json_schema()
        super().__init__(*args, **data)
        self._output_type = output_type

    @property
    def output_type(self) -> type[BaseModel] | None:
        """The Pydantic class answers are validated into, when given in Python."""
        return self._output_type

    def retry_options(self) -> RetryOptions:
        """The profile's retry budget as the call's one retry options object."""
        return RetryOptions(
            max_attempts=self.max_attempts,
            max_retry_after_seconds=self.max_retry_after_seconds,
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
        )

    def prompt_parts(self) -> dict[str, Any]:
        """The profile's prompt-shaping fields (part of every cache key)."""
        return {"system_prompt": self.system_prompt, "prompt_template": self.prompt_template}

    def render_user_message(self, prompt: str, variables: dict[str, Any] | None = None) -> str:
        """Render the user message from the prompt and the template, if any.

        Args:
            prompt: The call's prompt text, available to the template as ``{input}``.
            variables: Other values the template may name.

        Returns:
            The user message text.

        Raises:
            ConfigurationError: The template names a variable that was not given.

        """
        if not self.prompt_template:
            return prompt
        values = {k: _as_text(v) for k, v in (variables or {}).items()}
        values.setdefault("input", prompt)
        try:
            return self.prompt_template.format_map(values)
        except KeyError as exc:
            raise ConfigurationError(
                f"agent {self.name!r}: prompt template names {{{exc.args[0]}}} but the call has "
                f"no such variable (have: {', '.join(sorted(values))})"
            ) from None
        except (ValueError, IndexError) as exc:
            raise ConfigurationError(f"agent {self.name!r}: bad prompt template: {exc}") from None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


DEFAULT_MAX_TOKENS = 1024
"""The built-in agents' completion budget: enough for a full answer, and a local model
that never stops cannot fill the server's whole context (raise it with --max-tokens)."""

BUILTIN_PROFILES: dict[str, AgentProfile] = {
    "default": AgentProfile(
        name="default",
        system_prompt="You are a helpful, precise assistant. Answer the task you are given.",
        max_tokens=DEFAULT_MAX_TOKENS,
    ),
    "coder": AgentProfile(
        name="coder",
        system_prompt=(
            "You are a senior software engineer. Write complete, working code that meets the "
            "contract you are given exactly: honour every stated input, output and constraint, "
            "include type hints and docstrings, and answer with the code and a brief note."
        ),
        temperature=0.2,
        max_tokens=DEFAULT_MAX_TOKENS,
    ),
    "debug": AgentProfile(
        name="debug",
        system_prompt=(
            "You are a debugging specialist. Find the root cause of the problem you are given: "
            "state the symptom, form hypotheses, rule them out with the evidence, and finish "
            "with the root cause, the fix and how to verify it."
        ),
        temperature=0.0,
        max_tokens=DEFAULT_MAX_TOKENS,
    ),
}


def builtin_profile_names() -> list[str]:
    """Names of the profiles that exist without any configuration."""
    return sorted(BUILTIN_PROFILES)


def resolve_agent(
    agent: str | AgentProfile,
    extra: dict[str, AgentProfile] | None = None,
) -> AgentProfile:
    """Find an agent profile by name, or pass a profile object through.

    Order: a profile object; a name in ``extra`` (e.g. a plan's ``agents``); a
    built-in profile; a saved ``AgentProfile`` block of that name.

    Raises:
        ConfigurationError: No profile of that name exists anywhere.

    """
    if isinstance(agent, AgentProfile):
        return agent
    if extra and agent in extra:
        return extra[agent]
    if agent in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[agent]
    try:
        loaded = AgentProfile.load(agent, validate=True)
    except (ValueError, Exception) as exc:  # block not found, or no API reachable
        raise ConfigurationError(
            f"unknown agent {agent!r}: not a built-in ({', '.join(builtin_profile_names())}), "
            f"not among the run's own agents (a plan's 'agents', --agents FILE), and no saved "
            f"AgentProfile block named "
            f"{agent!r} ({type(exc).__name__})"
        ) from None
    return loaded  # type: ignore[return-value]
