"""Traffic results parsed: iperf3's JSON reports and the ping matrix (pure logic). The
reports in tests/data are iperf3 3.12's, from guests of the package image (h1 to h2, h1's
side limited to 2 Mbit/s; the refused one to a port with no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_netlab.errors import LabError
from pytest_netlab.traffic import PingMatrix, answered, parse_iperf, ping_all_command

DATA = Path(__file__).parent / "data"


def test_a_tcp_report_gives_the_receiver_s_throughput_and_the_retransmits():
    result = parse_iperf((DATA / "iperf3_tcp.json").read_text())
    assert (result.protocol, result.bits_per_second, result.retransmits) == ("TCP", 1900865.681083745, 0)
    assert result.sent_bits_per_second == 4955862.774604865 and result.jitter_ms is None
    assert str(result) == "iperf3 TCP: 1.90 Mbit/s over 1.76728 s, 0 retransmits"


def test_a_udp_report_gives_jitter_and_loss():
    result = parse_iperf((DATA / "iperf3_udp.json").read_text())
    assert (result.protocol, result.bits_per_second) == ("UDP", 998449.5325315815)
    assert (result.jitter_ms, result.lost_packets, result.packets, result.lost_percent) == (
        0.421656070401356, 0, 87, 0
    )
    assert result.retransmits is None
    assert str(result) == "iperf3 UDP: 1.00 Mbit/s over 1.00937 s, jitter 0.422 ms, 0/87 lost"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ((DATA / "iperf3_refused.json").read_text(),
         "iperf3 failed: unable to connect to server: Connection refused"),
        ("iperf3: error", "iperf3 printed no JSON report"),
    ],
)
def test_an_error_report_is_a_lab_error_with_iperf3_s_message(text, message):
    with pytest.raises(LabError, match=message):
        parse_iperf(text)


def test_one_command_pings_all_and_its_output_is_parsed():
    command = ping_all_command(["10.0.0.2", "10.0.0.3"], count=1, wait=3)
    assert command.startswith("for a in 10.0.0.2 10.0.0.3; do (ping -n -c 1 -W 3 ")
    assert answered("ok 10.0.0.3\nlost 10.0.0.2\n") == {"10.0.0.3"}


def test_the_matrix_lists_the_unreachable_pairs_and_reads_as_a_table():
    matrix = PingMatrix({"h1": {"h2": True, "h3": False}, "h2": {"h1": True, "h3": True}})
    assert not matrix and matrix.unreachable == [("h1", "h3")]
    assert str(matrix) == "h1 -> h2 XX\nh2 -> h1 h3\n3/4 pairs answered: unreachable h1->h3"
    assert PingMatrix({"h1": {"h2": True}, "h2": {"h1": True}})
