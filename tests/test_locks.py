"""Call locks: one holder per key across threads, and no lock file left behind."""

from __future__ import annotations

import threading
import time

from prefect_fanout.call.locks import FlockLockManager


def test_holders_of_one_key_never_overlap_and_no_file_is_left(tmp_path):
    manager = FlockLockManager(tmp_path / "locks")
    inside = 0
    most = 0
    guard = threading.Lock()

    def worker(n: int) -> None:
        nonlocal inside, most
        for i in range(40):
            holder = f"w{n}-{i}"
            assert manager.acquire_lock("key", holder, acquire_timeout=30)
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.001)  # widen the window in which a second holder would show
            with guard:
                inside -= 1
            manager.release_lock("key", holder)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1
    assert list((tmp_path / "locks").iterdir()) == []  # released locks leave no file
    assert not manager.is_locked("key")
    assert list((tmp_path / "locks").iterdir()) == []  # asking creates none either


def test_a_second_release_is_a_no_op_but_another_holders_release_is_refused(tmp_path):
    """Prefect commits a nested call's transaction twice; the second release changes nothing."""
    import pytest

    manager = FlockLockManager(tmp_path / "locks")
    assert manager.acquire_lock("key", "first", acquire_timeout=5)
    with pytest.raises(ValueError, match="No lock held by second"):
        manager.release_lock("key", "second")
    assert manager.is_locked("key")
    manager.release_lock("key", "first")
    manager.release_lock("key", "first")  # again: nothing held, nothing raised
    assert not manager.is_locked("key")
    assert manager.acquire_lock("key", "second", acquire_timeout=5)
    manager.release_lock("key", "second")
