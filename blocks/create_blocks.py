"""Create or update the named block documents prefect-fanout's flows and plans refer to.

    python blocks/create_blocks.py                 # endpoints and agent profiles
    python blocks/create_blocks.py --only profiles # just the agent profiles

Documents (block type / name):

- fanout-llm-endpoint/openai   from OPENAI_API_KEY (skipped with a message when unset),
                               OPENAI_BASE_URL, OPENAI_ORG_ID, FANOUT_OPENAI_MODEL;
- fanout-llm-endpoint/local    an OpenAI-compatible server on this machine:
                               FANOUT_LOCAL_BASE_URL (default http://127.0.0.1:11434/v1, Ollama),
                               FANOUT_LOCAL_MODEL (default llama3.2), FANOUT_LOCAL_API_KEY;
- fanout-agent-profile/default, /coder, /debug   the built-in agent profiles.

Idempotent: each document is saved with overwrite=True, so a second run updates the
documents in place and never duplicates them. The Prefect API is the one the current
profile or PREFECT_API_URL names. Exit code 0 on success, 1 when the API cannot be used.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="create_blocks.py",
        description="Create or update prefect-fanout's endpoint and agent-profile blocks.",
    )
    parser.add_argument(
        "--only",
        choices=("endpoints", "profiles"),
        help="save only the endpoint documents or only the agent-profile documents",
    )
    parser.add_argument(
        "--local-base-url",
        help="base URL of the 'local' endpoint (overrides FANOUT_LOCAL_BASE_URL)",
    )
    parser.add_argument(
        "--local-model",
        help="default model of the 'local' endpoint (overrides FANOUT_LOCAL_MODEL)",
    )
    args = parser.parse_args(argv)

    import os

    from prefect_fanout.blocks import create_blocks

    env = dict(os.environ)
    if args.local_base_url:
        env["FANOUT_LOCAL_BASE_URL"] = args.local_base_url
    if args.local_model:
        env["FANOUT_LOCAL_MODEL"] = args.local_model
    try:
        changes = create_blocks(
            env,
            endpoints=args.only in (None, "endpoints"),
            profiles=args.only in (None, "profiles"),
        )
    except Exception as exc:  # no server, refused connection, bad settings
        print(
            f"create_blocks.py: could not save blocks: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1
    for change in changes:
        print(change)
    return 0


if __name__ == "__main__":
    sys.exit(main())
