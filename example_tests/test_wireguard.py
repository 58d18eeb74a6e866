"""WireGuard across a router: site A (guest a, on bridge wan_a) and site B (guest b, on
wan_b) reach each other through router rt, and build a tunnel. Pings over the tunnel
addresses work, and a capture on the transit bridge wan_a sees nothing but UDP between
the two endpoints on the WireGuard port: no ICMP in clear. See
docs/scenarios/wireguard.md."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import dpkt
from guest_packages import PACKAGES

PORT = 51820
TUNNEL = {"a": "10.99.0.1", "b": "10.99.0.2"}


# --8<-- [start:tunnel]
def wireguard(vm, peer, peer_key: str) -> None:
    """Interface wg0 on *vm* with its tunnel address, and *peer* reachable through it."""
    vm.ssh(f"ip link add wg0 type wireguard"
           f" && wg set wg0 listen-port {PORT} private-key /etc/wireguard/private.key"
           f" peer {peer_key} endpoint {peer.address()}:{PORT} allowed-ips {TUNNEL[peer.name]}/32"
           f" && ip addr add {TUNNEL[vm.name]}/24 dev wg0 && ip link set wg0 up")


def public_key(vm, tmp_path) -> str:
    """A new private key for *vm* (32 random bytes, made on the host: guests resumed
    from one saved state start with the same random state, so `wg genkey` run at once
    in two of them can give both the same key); its public key, as `wg` derives it."""
    key = tmp_path / f"{vm.name}.key"
    key.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    vm.ssh("mkdir -p /etc/wireguard")
    vm.put(key, "/etc/wireguard/private.key", mode=0o600)  # never readable by others
    return vm.ssh("wg pubkey < /etc/wireguard/private.key").stdout.strip()
# --8<-- [end:tunnel]


def ports(packet) -> tuple[int, int]:
    """The UDP source and destination ports of a captured packet."""
    udp = dpkt.ethernet.Ethernet(packet.frame).data.data
    return udp.sport, udp.dport


def test_a_tunnel_between_two_sites_hides_what_it_carries(netlab, tmp_path: Path) -> None:
    # --8<-- [start:lab]
    image = netlab.image(packages=PACKAGES)
    wan_a = netlab.bridge("wan_a", subnet="172.16.1.0/24")
    wan_b = netlab.bridge("wan_b", subnet="172.16.2.0/24")
    rt = netlab.router("rt", nics=[wan_a, wan_b], image=image)
    a = netlab.vm("a", nics=[wan_a], gateway="auto", image=image)
    b = netlab.vm("b", nics=[wan_b], gateway="auto", image=image)
    netlab.start()
    rt.enable_forwarding()
    keys = {vm: public_key(vm, tmp_path) for vm in (a, b)}
    assert keys[a] != keys[b]
    wireguard(a, b, keys[b])
    wireguard(b, a, keys[a])
    # --8<-- [end:lab]

    # --8<-- [start:capture]
    with netlab.capture(wan_a) as cap:
        a.wait_until(lambda: a.ping(TUNNEL["b"]), timeout=60)  # the handshake, then a reply
        assert a.ping(TUNNEL["b"], count=3)
    assert "latest handshake" in a.ssh("wg show wg0").stdout
    ipv4 = [p for p in cap.packets if p.kind == "ipv4"]
    assert ipv4  # the tunnel's traffic crossed wan_a...
    assert not [p for p in ipv4 if p.protocol == "icmp"]  # ...and no ICMP in clear
    endpoints = {a.address(), b.address()}
    for packet in ipv4:  # only UDP between the endpoints, to or from the WireGuard port
        assert packet.protocol == "udp" and {packet.src_ip, packet.dst_ip} == endpoints, packet
        assert ports(packet) == (PORT, PORT), packet
    # --8<-- [end:capture]
