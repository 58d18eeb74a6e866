"""Shared set-up of the plugin's own tests."""

from __future__ import annotations

import pytest

from pytest_netlab.image import cache_root

# pytester points HOME at a fresh directory: inner runs would build the guest image and
# probe KVM again in an empty cache (tens of seconds each) instead of using the machine's
_MACHINE_CACHE = str(cache_root())


@pytest.fixture(autouse=True)
def _netlab_machine_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", _MACHINE_CACHE)
