"""Shared set-up of the plugin's own tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from local_users import User, make_user, remove_user

from pytest_netlab.image import cache_root

# pytester points HOME at a fresh directory: inner runs would build the guest image and
# probe KVM again in an empty cache (tens of seconds each) instead of using the machine's
_MACHINE_CACHE = str(cache_root())


@pytest.fixture(autouse=True)
def _netlab_machine_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", _MACHINE_CACHE)


@pytest.fixture
def two_users() -> Iterator[tuple[User, User]]:
    """Users ``nltest-a-<hex>`` and ``nltest-b-<hex>`` (with subordinate ids, as Debian's
    useradd gives them), removed afterwards with whatever they left running (root only:
    see tests/local_users.py)."""
    suffix = secrets.token_hex(3)
    made: list[str] = []
    try:
        users = []
        for letter in "ab":
            name = f"nltest-{letter}-{suffix}"
            users.append(make_user(name))
            made.append(name)
        yield users[0], users[1]
    finally:
        failures = []
        for name in made:  # each one, whatever happened to the other
            try:
                remove_user(name)
            except Exception as exc:  # noqa: BLE001 - reported below, after both
                failures.append(f"{name}: {exc}")
        assert not failures, failures
