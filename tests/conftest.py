"""Shared by the plugin's own tests."""

from __future__ import annotations

import pytest

from pytest_netlab.image import cache_root

# pytester gives inner runs a HOME of their own, where the cache would be empty: every
# inner run would build the guest image and templates again (minutes). Point them here.
CACHE = cache_root()


@pytest.fixture(autouse=True)
def _shared_netlab_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(CACHE))
