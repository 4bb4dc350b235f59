"""A markdown artifact listing a run's failed calls: readable in the UI, no file links needed.

The browser refuses ``file://`` links opened from the Prefect UI, so the error
and an excerpt of the prompt of every failed call (up to :data:`MAX_SHOWN`) are
put in the flow run's artifacts themselves, redacted like everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prefect_fanout.bounded import call_within
from prefect_fanout.redact import redact
from prefect_fanout.ui.artifacts import PUBLISH_WAIT_SECONDS, artifact_key
from prefect_fanout.usage import CallRecord

__all__ = ["MAX_SHOWN", "PROMPT_EXCERPT", "failures_markdown", "publish_failures"]

MAX_SHOWN = 50
PROMPT_EXCERPT = 500
FAILED = ("failed", "dead_letter")


def _block(text: str) -> str:
    return "````text\n" + text.replace("````", "'```") + "\n````"


def failures_markdown(
    title: str, records: Sequence[CallRecord], prompt_of: Callable[[CallRecord], str | None]
) -> str:
    """The failed calls of ``records``: each one's error and the start of its prompt."""
    failed = [r for r in records if r.status in FAILED]
    lines = [f"# {title}: {len(failed)} failed call(s)", ""]
    for record in failed[:MAX_SHOWN]:
        where = f" (partition {record.partition})" if record.partition else ""
        lines += [f"## {record.agent}:{record.id}{where}", "", f"**{record.status}**", ""]
        lines += [_block(record.error or "(no error recorded)"), ""]
        prompt = prompt_of(record)
        if prompt is not None:
            cut = prompt[:PROMPT_EXCERPT] + (" ..." if len(prompt) > PROMPT_EXCERPT else "")
            lines += ["Prompt:", "", _block(cut), ""]
    if len(failed) > MAX_SHOWN:
        lines.append(f"... and {len(failed) - MAX_SHOWN} more (see the calls table)")
    return redact("\n".join(lines))


def publish_failures(
    name: str,
    title: str,
    records: Sequence[CallRecord],
    prompt_of: Callable[[CallRecord], str | None],
    wait: float = PUBLISH_WAIT_SECONDS,
) -> bool:
    """Create the failures artifact of the current flow run when any call failed.

    Returns:
        Whether an artifact was created.
    """
    if not any(r.status in FAILED for r in records):
        return False
    markdown = failures_markdown(title, records, prompt_of)

    def create() -> None:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            markdown=markdown,
            key=artifact_key(f"fanout-{name}-failures"),
            description=f"{title}: the failed calls, their errors and prompts",
        )

    call_within(wait, "the failures artifact", create)
    return True
