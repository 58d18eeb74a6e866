"""Impairment settings: checks and the tc command they become (pure logic)."""

from __future__ import annotations

import pytest

from pytest_netlab import ConfigError, WaitTimeout
from pytest_netlab.impairment import Impairment
from pytest_netlab.retry import retry_until


def test_settings_become_one_netem_command():
    impairment = Impairment(delay_ms=100, jitter_ms=10, loss_percent=0.5, rate_kbit=1000)
    argv = impairment.validated().tc_argv("eth1")
    assert argv == [
        "tc", "qdisc", "replace", "dev", "eth1", "root", "netem",
        "delay", "100ms", "10ms", "loss", "0.5%", "rate", "1000kbit", "limit", "10000",
    ]
    assert Impairment().tc_argv("eth0") == ["tc", "qdisc", "del", "dev", "eth0", "root"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay_ms": -1}, "delay_ms -1 is not accepted"),
        ({"delay_ms": "100ms"}, "delay_ms '100ms' is not accepted"),
        ({"loss_percent": 101}, "loss_percent 101 is not accepted: give a number from 0 to 100 %"),
        ({"delay_ms": 10, "jitter_ms": 20}, "jitter_ms 20 is larger than delay_ms 10"),
        ({"rate_kbit": 0}, "rate_kbit 0 is not accepted"),
        ({"rate_kbit": 1.5}, "rate_kbit 1.5 is not accepted"),
    ],
)
def test_bad_settings_are_refused_with_the_value_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Impairment(**kwargs).validated()


def test_retry_returns_the_first_success_and_reports_the_last_failure():
    seen = iter([(False, "one"), (False, "two"), (True, "three")])
    assert retry_until(lambda left: next(seen), timeout=5, interval=0.01, what="x") == "three"
    with pytest.raises(WaitTimeout, match=r"(?s)thing: not reached within 0.05 s \(\d+ attempts\).*still no"):
        retry_until(lambda left: (False, "still no"), timeout=0.05, interval=0.01, what="thing")
