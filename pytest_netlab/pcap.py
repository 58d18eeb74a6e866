"""Packet capture on the lab's bridges: tcpdump inside the lab namespace writes pcap
files, and :func:`read_pcap` parses them with dpkt into :class:`Packet` records that a
test can assert on.

Guests decide what crosses a bridge, so neither a flood nor a malformed frame may hurt
the host: a pcap file stops growing at :data:`PCAP_FILE_LIMIT` bytes (tcpdump runs with
that file size limit), :func:`read_pcap` reads at most *max_packets* frames and
*max_bytes* bytes of them, and a frame dpkt cannot parse is kept as a raw record
(``kind="malformed"``) instead of ending the capture."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt

from .errors import LabError

log = logging.getLogger(__name__)

READY_TIMEOUT = 10.0
PCAP_FILE_LIMIT = 64 * 1024 * 1024  # bytes; tcpdump is stopped by the kernel there
READ_PACKETS_LIMIT = 250_000
READ_BYTES_LIMIT = 64 * 1024 * 1024


def tcpdump_argv(interface: str, path: Path, limit: int | None = None) -> list[str]:
    """tcpdump writing every frame on *interface* to *path* as it arrives
    (``--immediate-mode``: else frames wait in the kernel's ring for a buffer timeout and
    are lost when tcpdump is stopped; ``-U``: flushed per packet), as root (``-Z root``:
    it would drop to a user that cannot write the test's directory). It may write at
    most *limit* bytes (default :data:`PCAP_FILE_LIMIT`; ``prlimit --fsize``: the kernel
    ends it with SIGXFSZ there, and the file keeps the frames before)."""
    return [
        "prlimit", f"--fsize={PCAP_FILE_LIMIT if limit is None else limit}",
        "tcpdump", "-n", "-i", interface, "--immediate-mode", "-U", "-Z", "root", "-s", "0",
        "-w", str(path),
    ]


def reached_limit(path: Path, limit: int | None = None) -> bool:
    """Whether the pcap file *path* stopped growing at its size limit (later frames lost)."""
    try:
        return path.stat().st_size >= (PCAP_FILE_LIMIT if limit is None else limit)
    except OSError:
        return False


def wait_listening(log_path: Path, proc: Any, timeout: float = READY_TIMEOUT) -> None:
    """Wait until tcpdump says it is listening (it is attached to the interface then).

    Raises:
        LabError: tcpdump exited or said nothing within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if "listening on" in text:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(
                f"tcpdump did not start (exit status {proc.poll()}): {text.strip() or 'no output'}"
            )
        time.sleep(0.02)


@dataclass(frozen=True)
class Packet:
    """One Ethernet frame seen on a bridge."""

    time: float
    src_mac: str
    dst_mac: str
    kind: str  # "arp", "ipv4", "ipv6" or the ethertype in hex
    src_ip: str | None = None
    dst_ip: str | None = None
    protocol: str | None = None  # "icmp", "tcp", "udp", "icmp6" or the number
    arp_op: str | None = None  # "request" or "reply"
    icmp_type: int | None = None
    frame: bytes = b""

    @property
    def broadcast(self) -> bool:
        return self.dst_mac == "ff:ff:ff:ff:ff:ff"


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}


def parse_frame(ts: float, raw: bytes) -> Packet:
    """Describe one Ethernet frame; one that cannot be parsed (too short, a header that
    lies about its lengths) is a ``kind="malformed"`` record with the raw ``frame``."""
    try:
        return _parse(ts, raw)
    except Exception:  # noqa: BLE001 - dpkt, struct, socket: any frame a guest made must not end the capture
        return Packet(
            time=ts, src_mac=_mac(raw[6:12]), dst_mac=_mac(raw[0:6]), kind="malformed", frame=raw,
        )


def _parse(ts: float, raw: bytes) -> Packet:
    eth = dpkt.ethernet.Ethernet(raw)
    base: dict[str, Any] = {
        "time": ts, "src_mac": _mac(eth.src), "dst_mac": _mac(eth.dst), "frame": raw,
    }
    data = eth.data
    if isinstance(data, dpkt.arp.ARP):
        op = {dpkt.arp.ARP_OP_REQUEST: "request", dpkt.arp.ARP_OP_REPLY: "reply"}.get(data.op, str(data.op))
        return Packet(
            kind="arp", src_ip=socket.inet_ntoa(data.spa), dst_ip=socket.inet_ntoa(data.tpa),
            arp_op=op, **base,
        )
    if isinstance(data, (dpkt.ip.IP, dpkt.ip6.IP6)):
        v6 = isinstance(data, dpkt.ip6.IP6)
        number = data.nxt if v6 else data.p
        icmp = data.data if isinstance(data.data, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)) else None
        return Packet(
            kind="ipv6" if v6 else "ipv4",
            src_ip=str(ipaddress.ip_address(data.src)), dst_ip=str(ipaddress.ip_address(data.dst)),
            protocol=_PROTOCOLS.get(number, str(number)),
            icmp_type=icmp.type if icmp is not None else None, **base,
        )
    return Packet(kind=f"0x{eth.type:04x}", **base)


def read_pcap(
    path: Path, *, max_packets: int = READ_PACKETS_LIMIT, max_bytes: int = READ_BYTES_LIMIT
) -> list[Packet]:
    """The frames of a pcap file, in order: at most *max_packets* of them and
    *max_bytes* bytes of frames (a warning says when more were left). A file cut short
    (tcpdump stopped in the middle of a write) gives the frames before the cut; a frame
    that cannot be parsed is a ``kind="malformed"`` record (see :func:`parse_frame`)."""
    packets: list[Packet] = []
    size = 0
    with open(path, "rb") as handle:
        try:
            reader = dpkt.pcap.Reader(handle)
        except ValueError:
            return packets  # no header yet: nothing was captured
        iterator: Iterator[tuple[float, bytes]] = iter(reader)
        while True:
            try:
                ts, raw = next(iterator)
            except (StopIteration, dpkt.NeedData, ValueError):
                break
            size += len(raw)
            if len(packets) >= max_packets or size > max_bytes:
                log.warning(
                    "%s: only the first %d frames read (limits: %d frames, %d bytes)",
                    path, len(packets), max_packets, max_bytes,
                )
                break
            packets.append(parse_frame(float(ts), bytes(raw)))
    return packets


class Capture:
    """What crossed a bridge while a ``with lab.capture(bridge)`` block ran.

    ``packets`` is filled when the block ends. ``truncated`` is true when the file
    reached :data:`PCAP_FILE_LIMIT` (a flood): frames after that were not recorded.
    """

    def __init__(self, bridge: str, path: Path) -> None:
        self.bridge = bridge
        self.path = path
        self.packets: list[Packet] = []
        self.truncated = False

    def load(self) -> None:
        """Read the file tcpdump wrote into ``packets`` (call once it stopped)."""
        self.truncated = reached_limit(self.path)
        if self.truncated:
            log.warning(
                "capture on %s reached its limit of %d bytes: later frames were not recorded (%s)",
                self.bridge, PCAP_FILE_LIMIT, self.path,
            )
        self.packets = read_pcap(self.path)

    def arp_requests(self, sender_ip: str | None = None, target_ip: str | None = None) -> list[Packet]:
        """ARP requests, optionally only those from *sender_ip* or for *target_ip*."""
        return [
            p for p in self.packets
            if p.arp_op == "request" and sender_ip in (None, p.src_ip) and target_ip in (None, p.dst_ip)
        ]

    def icmp(self, src_ip: str | None = None, dst_ip: str | None = None) -> list[Packet]:
        """ICMP (v4 and v6) packets, optionally filtered by addresses."""
        return [
            p for p in self.packets
            if p.protocol in ("icmp", "icmp6") and src_ip in (None, p.src_ip) and dst_ip in (None, p.dst_ip)
        ]

    def __repr__(self) -> str:
        return f"<Capture on {self.bridge}: {len(self.packets)} packets, {self.path}>"
