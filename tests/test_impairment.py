"""Impairment settings: checks, where they go, and the tc command or pyroute2 call they
become (pure logic; the real qdiscs are tested in test_helpers.py)."""

from __future__ import annotations

import pytest
from pyroute2.netlink.rtnl.tcmsg import sched_netem, sched_tbf

from pytest_netlab import ConfigError, WaitTimeout
from pytest_netlab.impairment import Impairment
from pytest_netlab.netns import TC_H_ROOT, LabNamespace
from pytest_netlab.retry import retry_until


def test_settings_become_one_netem_command():
    impairment = Impairment(delay_ms=100, jitter_ms=10, loss_percent=0.5, rate_kbit=1000)
    argv = impairment.validated().tc_argv("eth1")
    assert argv == [
        "tc", "qdisc", "replace", "dev", "eth1", "root", "netem",
        "delay", "100ms", "10ms", "loss", "0.5%", "rate", "1000kbit", "limit", "10000",
    ]
    assert Impairment().tc_argv("eth0") == ["tc", "qdisc", "del", "dev", "eth0", "root"]


def test_corruption_duplication_and_reordering_are_netem_s():
    impairment = Impairment(
        delay_ms=20, corrupt_percent=1, duplicate_percent=2.5, reorder_percent=25
    ).validated()
    assert impairment.tc_argv("eth0")[7:] == [
        "delay", "20ms", "corrupt", "1%", "duplicate", "2.5%", "reorder", "25%", "limit", "10000",
    ]
    assert impairment.tap_qdisc() == ("netem", {
        "limit": 10000, "delay": 20000, "prob_corrupt": 1, "duplicate": 2.5, "prob_reorder": 25,
    })
    # corruption alone is an impairment (netem's), not a removal
    alone = Impairment(corrupt_percent=1).validated()
    assert not alone.none and alone.tap_qdisc_kind == "netem"
    assert alone.placed(_host("tbf")).where == "guest"


def _host(*kinds):
    return lambda kind: kind in kinds


@pytest.mark.parametrize(
    ("kwargs", "host", "where"),
    [
        ({"rate_kbit": 800}, ("tbf",), "tap"),
        ({"rate_kbit": 800}, (), "guest"),
        ({"delay_ms": 10}, ("tbf",), "guest"),  # no netem on the host: the guest's
        ({"delay_ms": 10}, ("tbf", "netem"), "tap"),
        ({"loss_percent": 1, "rate_kbit": 800}, ("tbf",), "guest"),
        ({"rate_kbit": 800, "where": "guest"}, ("tbf", "netem"), "guest"),
        ({"delay_ms": 10, "where": "tap"}, ("netem",), "tap"),
    ],
)
def test_auto_puts_an_impairment_on_the_tap_where_the_host_has_the_qdisc(kwargs, host, where):
    assert Impairment(**kwargs).validated().placed(_host(*host)).where == where


def test_tap_without_netem_on_the_host_is_refused_with_the_way_out():
    with pytest.raises(
        ConfigError,
        match=r"^where='tap' needs the netem qdisc, which this host's kernel lacks \(no sch_netem\): "
        r"use where='guest' \(shapes traffic from the guest\) instead$",
    ):
        Impairment(loss_percent=5, where="tap").validated().placed(_host("tbf"))
    with pytest.raises(ConfigError, match="where 'TAP' is not accepted: give 'auto', 'tap'"):
        Impairment(rate_kbit=800, where="TAP").validated()  # type: ignore[arg-type]


def test_on_a_tap_delay_and_loss_become_netem_and_a_rate_alone_tbf():
    kind, parameters = Impairment(delay_ms=100, jitter_ms=10, loss_percent=0.5, rate_kbit=1000).tap_qdisc()
    assert (kind, parameters) == (
        "netem", {"limit": 10000, "delay": 100_000, "jitter": 10_000, "loss": 0.5, "rate": "1000kbit"},
    )
    # what pyroute2 puts into the netlink message from them (delays in the kernel's ticks)
    options = sched_netem.get_parameters(parameters)
    assert options["delay"] > 0 and options["jitter"] == options["delay"] / 10
    assert options["loss"] == int(0xFFFFFFFF * 0.5 / 100) and options["limit"] == 10000
    rate = dict(options["attrs"])["TCA_NETEM_RATE"]
    assert rate["rate"] == 1_000_000 // 8  # bytes/s
    kind, parameters = Impairment(rate_kbit=800).tap_qdisc()
    assert (kind, parameters) == ("tbf", {"rate": "800kbit", "burst": 3028, "latency": "200ms"})
    tbf = dict(sched_tbf.get_parameters(parameters)["attrs"])["TCA_TBF_PARMS"]
    assert tbf["rate"] == 100_000 and tbf["limit"] == 100_000 * 2 // 10 + 3028
    assert Impairment().tap_qdisc() is None


class _FakeIPRoute:
    """Records the tc calls; one link, 'vport1', index 7."""

    def __init__(self):
        self.calls = []

    def link_lookup(self, ifname):
        return [7] if ifname == "vport1" else []

    def tc(self, *args, **kwargs):
        self.calls.append((args, kwargs))


def test_the_tap_gets_one_root_qdisc_replaced_in_place_and_removed_by_its_parent():
    namespace = LabNamespace("netlab-fake")
    namespace._ipr = fake = _FakeIPRoute()
    kind, parameters = Impairment(delay_ms=50, loss_percent=1).tap_qdisc()
    namespace.set_root_qdisc("vport1", kind, parameters)
    namespace.remove_root_qdisc("vport1")
    assert fake.calls == [
        (("replace", "netem", 7, 0x10000), {"limit": 10000, "delay": 50_000, "loss": 1}),
        (("del",), {"index": 7, "parent": TC_H_ROOT}),
    ]
    namespace._ipr = None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay_ms": -1}, "delay_ms -1 is not accepted"),
        ({"delay_ms": "100ms"}, "delay_ms '100ms' is not accepted"),
        ({"loss_percent": 101}, "loss_percent 101 is not accepted: give a number from 0 to 100 %"),
        ({"delay_ms": 10, "jitter_ms": 20}, "jitter_ms 20 is larger than delay_ms 10"),
        ({"rate_kbit": 0}, "rate_kbit 0 is not accepted"),
        ({"rate_kbit": 1.5}, "rate_kbit 1.5 is not accepted"),
        ({"corrupt_percent": 120}, "corrupt_percent 120 is not accepted: give a number from 0 to 100 %"),
        ({"duplicate_percent": True}, "duplicate_percent True is not accepted"),
        ({"reorder_percent": 10}, "reorder_percent 10 needs a delay"),
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
