"""The Debian packages of the example tests that run network software in their guests
(OSPF with FRR, BGP with BIRD, nftables, iperf3, WireGuard, and the clients that check
them): one list, imported by each of those tests, so CI builds one image for all of them.
See docs/package-images.md."""

from __future__ import annotations

# --8<-- [start:packages]
PACKAGES = ["bird2", "frr", "iperf3", "netcat-openbsd", "nftables", "traceroute", "wireguard-tools"]
# --8<-- [end:packages]
