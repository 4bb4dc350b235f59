"""Profile B1's per-call path: one ``fanout map`` of N calls under py-spy, stacks summed.

    python benchmarks/profile_b1.py [--items 1000] [--out /tmp/b1-profile]

Starts the fake OpenAI server (latency 0.5 s) and a standalone Prefect server as B1 does,
runs B1's command under ``py-spy record --format raw`` (the sampled stacks of the fanout
process, every thread, idle frames left out) and prints the 30 frames whose own samples
(self) and whose samples with their callees (total) are highest, as shares of all samples.
The wall time of the profiled run is slower than B1's (py-spy costs a little); compare the
shares before and after a change, not the seconds. Run on demand, never in tests.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import (  # noqa: E402
    Standalone,
    client_env,
    compile_package,
    corpus,
    map_command,
)
from tests.fakeopenai import FakeOpenAI  # noqa: E402


def _frame(text: str) -> str:
    """``name (path/file.py:12)`` -> ``name (dir/file.py)``: a function, whatever its line."""
    name, _, where = text.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(where.split('/')[-2:])})"


def summarise(raw: Path, top: int = 30) -> None:
    """Print the frames with the most own and total samples in py-spy's raw stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [
            frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1] for frame in stack.split(";")
        ]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"{samples} samples")
    for title, counter in (("self", own), ("total", total)):
        print(f"\n## top {top} by {title}")
        for frame, n in counter.most_common(top):
            print(f"{100 * n / samples:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--out", default="/tmp/b1-profile")
    args = parser.parse_args()
    compile_package()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with FakeOpenAI(default_latency=0.5) as fake, Standalone() as server:
        work = Path(tempfile.mkdtemp(prefix="profile-"))
        source = corpus(work / "c.jsonl", args.items, uuid.uuid4().hex[:8])
        env = client_env(fake, server.api_url, work)
        raw = out / "b1.raw"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [spy, "record", "--format", "raw", "--rate", "100", "--gil", "-o", str(raw)]
        started = time.perf_counter()
        subprocess.run(
            [*command, "--", *map_command(source, work / "out", 50)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(f"profiled run: {time.perf_counter() - started:.2f} s, {args.items} calls")
        shutil.rmtree(work, ignore_errors=True)
    summarise(raw)


if __name__ == "__main__":
    main()
