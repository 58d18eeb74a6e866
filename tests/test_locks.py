"""locks.unless_locked: what another holder has locked is left alone (pure logic)."""

from __future__ import annotations

from filelock import FileLock

from pytest_netlab.locks import unless_locked


def test_a_free_lock_is_held_for_the_block_and_released_after(tmp_path):
    lock = FileLock(str(tmp_path / "x.lock"))
    with unless_locked(lock) as held:
        assert held and lock.is_locked
    assert not lock.is_locked


def test_a_lock_someone_else_holds_is_not_waited_for(tmp_path):
    path = str(tmp_path / "x.lock")
    other = FileLock(path)
    with other:  # another holder (another file description, as another process would have)
        with unless_locked(FileLock(path)) as held:
            assert not held
        assert other.is_locked
    with unless_locked(FileLock(path)) as held:
        assert held
