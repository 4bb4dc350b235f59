"""Share cached answers between machines: one storage block as every process's result storage.

    python examples/shared_storage.py save /mnt/shared/fanout       # once, against your server
    python examples/shared_storage.py map corpus.jsonl out/         # on every machine

``save`` stores a ``LocalFileSystem`` block named ``fanout-shared-results`` on the Prefect
server (``PREFECT_API_URL``) whose base path is the shared directory (an NFS or SMB mount
that every machine sees at the same path). ``map`` runs ``map_corpus`` with that block as
result storage, so an answer one machine stored is a cache hit on every other. For object
storage, save a ``RemoteFileSystem`` block (``basepath="s3://bucket/fanout"``, with the
fsspec package of that scheme installed) under the same name instead: ``map`` does not change.

Locks (two identical calls in flight on two machines make one request) live beside
``PREFECT_LOCAL_STORAGE_PATH`` (``$PREFECT_LOCAL_STORAGE_PATH/.fanout-locks``): point it at
a directory of the same shared mount on every machine, one whose filesystem supports
``flock``. See docs/scale.md.
"""

from __future__ import annotations

import sys

BLOCK_NAME = "fanout-shared-results"


def save(directory: str) -> None:
    """Save the shared result-storage block (overwriting an earlier one)."""
    from prefect.filesystems import LocalFileSystem

    LocalFileSystem(basepath=directory).save(BLOCK_NAME, overwrite=True)
    print(f"saved local-file-system/{BLOCK_NAME} -> {directory}")


def run_map(corpus: str, output_dir: str) -> int:
    """Map the corpus with the shared block as result storage; print the summary."""
    from prefect_fanout import RunOptions, map_corpus

    options = RunOptions(result_storage=f"local-file-system/{BLOCK_NAME}", max_workers=8)
    summary = map_corpus(
        corpus, agent="default", partition="count:2", output_dir=output_dir, options=options
    )
    print(summary.model_dump_json())
    return 0 if summary.ok else 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "save":
        save(argv[1])
        return 0
    if len(argv) == 3 and argv[0] == "map":
        return run_map(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
