"""Traffic tests with parsed results: iperf3 between two guests on a package image
(TCP throughput and retransmits, UDP jitter and loss), and a ping matrix of a lab."""

from __future__ import annotations

import pytest
from test_package_image import PACKAGES  # one package set: CI builds one image

from pytest_netlab import ConfigError, LabError


# --8<-- [start:iperf]
def test_iperf_between_two_guests_gives_numbers(netlab):
    image = netlab.image(packages=PACKAGES)
    lan = netlab.bridge("lan", subnet="10.60.0.0/24")
    h1 = netlab.vm("h1", nics=[lan], image=image)
    h2 = netlab.vm("h2", nics=[lan], image=image)
    h1.impair(lan, rate_kbit=2000, where="guest")  # at most 2 Mbit/s leave h1
    netlab.start()

    tcp = h1.iperf(to=h2, seconds=2)  # the server runs on h2 for this call only
    assert 0.5e6 < tcp.bits_per_second < 2.5e6, tcp
    assert tcp.retransmits is not None and tcp.jitter_ms is None

    udp = h1.iperf(to=h2, seconds=2, udp=True, bitrate="1M")
    assert udp.jitter_ms is not None and udp.lost_percent is not None and udp.lost_percent < 50, udp
# --8<-- [end:iperf]
    assert h2.ssh("pidof iperf3", check=False).status == 1  # stopped after each call


def test_iperf_without_iperf3_names_the_missing_program(netlab):
    lan = netlab.bridge("lan", subnet="10.60.0.0/24")
    h1, h2 = netlab.vm("h1", nics=[lan]), netlab.vm("h2", nics=[lan])
    netlab.start()
    with pytest.raises(ConfigError, match="h1: iperf3 is not installed in the guest"):
        h1.iperf(to=h2)


# --8<-- [start:ping-all]
def test_ping_all_gives_a_matrix(netlab):
    lan = netlab.bridge("lan", subnet="10.61.0.0/24")
    _, _, h3 = (netlab.vm(name, nics=[lan]) for name in ("h1", "h2", "h3"))
    netlab.start()
    assert netlab.ping_all()  # every pair answered; else the message is the matrix

    h3.set_link(lan, False)  # pull h3's cable
    matrix = netlab.ping_all(wait=1)
    assert matrix.unreachable == [("h1", "h3"), ("h2", "h3"), ("h3", "h1"), ("h3", "h2")], matrix
    assert matrix.matrix["h1"] == {"h2": True, "h3": False}
# --8<-- [end:ping-all]


def test_ping_all_without_addressed_guests_is_refused(netlab):
    # an empty matrix would pass an `assert netlab.ping_all()`: it is refused instead
    with pytest.raises(LabError, match="ping_all needs two or more guests with lab addresses, found 0"):
        netlab.ping_all()


def test_bad_traffic_options_are_refused_before_anything_runs(netlab):
    h1, h2 = netlab.vm("h1"), netlab.vm("h2")  # declared, not started: nothing runs
    with pytest.raises(ConfigError, match="bitrate='fast' is not accepted: give iperf3's -b"):
        h1.iperf(to=h2, bitrate="fast")
    with pytest.raises(ConfigError, match="seconds=0 is not accepted"):
        h1.iperf(to=h2, seconds=0)
    with pytest.raises(ConfigError, match="wait=0 is not accepted"):
        netlab.ping_all(wait=0)
