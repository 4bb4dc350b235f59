"""The script people write instead of prefect-fanout: asyncio.gather over AsyncOpenAI.

    python benchmarks/asyncio_baseline.py corpus.jsonl --concurrency 50 [--levels plan.json]

Reads OPENAI_BASE_URL / OPENAI_API_KEY like the openai client does. With --levels it runs a
plan level by level (each level's tasks at once, bounded by the semaphore), the baseline of a
dispatch. The benchmark times the whole process.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from openai import AsyncOpenAI


async def ask(client: AsyncOpenAI, gate: asyncio.Semaphore, prompt: str) -> str:
    async with gate:
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        return reply.choices[0].message.content or ""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--levels", action="store_true", help="source is a plan: run by level")
    args = parser.parse_args()
    client = AsyncOpenAI(max_retries=0)
    gate = asyncio.Semaphore(args.concurrency)
    if args.levels:
        plan = json.load(open(args.source))
        done: dict[str, str] = {}
        level = [t for t in plan["tasks"] if not t["dependencies"]]
        while level:
            answers = await asyncio.gather(*(ask(client, gate, t["description"]) for t in level))
            done.update({t["task_id"]: a for t, a in zip(level, answers, strict=True)})
            level = [
                t
                for t in plan["tasks"]
                if t["task_id"] not in done and all(d in done for d in t["dependencies"])
            ]
        print(len(done))
        return
    prompts = [json.loads(line)["text"] for line in open(args.source) if line.strip()]
    answers = await asyncio.gather(*(ask(client, gate, p) for p in prompts))
    print(len(answers))


if __name__ == "__main__":
    asyncio.run(main())
