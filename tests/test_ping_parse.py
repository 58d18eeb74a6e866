from __future__ import annotations

from pytest_netlab.ping import parse_ping

IPUTILS_OK = """PING 10.20.20.1 (10.20.20.1) 56(84) bytes of data.
64 bytes from 10.20.20.1: icmp_seq=1 ttl=63 time=1.82 ms

--- 10.20.20.1 ping statistics ---
1 packets transmitted, 1 received, 0% packet loss, time 0ms
rtt min/avg/max/mdev = 1.820/1.820/1.820/0.000 ms
"""

IPUTILS_LOSS = """PING 10.20.20.1 (10.20.20.1) 56(84) bytes of data.

--- 10.20.20.1 ping statistics ---
3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2040ms
pipe 3
"""

BUSYBOX_OK = """PING 10.0.0.1 (10.0.0.1): 56 data bytes
64 bytes from 10.0.0.1: seq=0 ttl=64 time=0.215 ms

--- 10.0.0.1 ping statistics ---
2 packets transmitted, 2 packets received, 0% packet loss
round-trip min/avg/max = 0.101/0.158/0.215 ms
"""


def test_iputils_reply_is_truthy_with_rtt():
    result = parse_ping("10.20.20.1", IPUTILS_OK)
    assert result
    assert (result.sent, result.received, result.loss_percent) == (1, 1, 0.0)
    assert result.rtt_avg == 1.82 and result.rtt_mdev == 0.0
    assert "1/1 replies" in str(result)


def test_iputils_no_reply_is_falsy_and_counts_errors():
    result = parse_ping("10.20.20.1", IPUTILS_LOSS, status=1)
    assert not result
    assert (result.sent, result.received, result.errors, result.loss_percent) == (3, 0, 3, 100.0)
    assert result.rtt_avg is None


def test_busybox_summary_is_understood():
    result = parse_ping("10.0.0.1", BUSYBOX_OK)
    assert result and result.received == 2 and result.rtt_max == 0.215


def test_output_without_summary_counts_as_unreachable():
    result = parse_ping("10.9.9.9", "ping: connect: Network is unreachable\n", status=2)
    assert not result and result.sent == 0 and result.loss_percent == 100.0
    assert str(result) == "ping 10.9.9.9: nothing sent (ping: connect: Network is unreachable)"
