"""Traffic results parsed: iperf3's JSON reports and the ping matrix (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_netlab.errors import LabError
from pytest_netlab.traffic import PingMatrix, answered, parse_iperf, ping_all_command

DATA = Path(__file__).parent / "data"


def test_a_tcp_report_gives_the_receiver_s_throughput_and_the_retransmits():
    result = parse_iperf((DATA / "iperf3_tcp.json").read_text())
    assert (result.protocol, result.bits_per_second, result.retransmits) == ("TCP", 1828571.4, 3)
    assert result.sent_bits_per_second == 2096768.5 and result.jitter_ms is None
    assert str(result) == "iperf3 TCP: 1.83 Mbit/s over 2.1 s, 3 retransmits"


def test_a_udp_report_gives_jitter_and_loss():
    result = parse_iperf((DATA / "iperf3_udp.json").read_text())
    assert (result.protocol, result.bits_per_second, result.jitter_ms) == ("UDP", 982624, 0.412)
    assert (result.lost_packets, result.packets, result.lost_percent) == (3, 173, 1.734)
    assert result.retransmits is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"start": {}, "intervals": [], "error": "unable to connect to server: Connection refused"}',
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
