"""Traffic tests' results as data: iperf3's JSON report (``iperf3 -J``) and a matrix of
pings between many guests, parsed from what the guests print. Pure: the guest side is
:meth:`pytest_netlab.guest.VM.iperf` and :meth:`pytest_netlab.lab.Lab.ping_all`."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LabError


@dataclass(frozen=True)
class IperfResult:
    """One iperf3 run. ``bits_per_second`` is what the receiver got; ``retransmits``
    is TCP's (None for UDP); ``jitter_ms``, ``lost_packets`` and ``lost_percent`` are
    UDP's (None for TCP)."""

    protocol: str  # "TCP" or "UDP"
    seconds: float
    bits_per_second: float
    sent_bits_per_second: float
    retransmits: int | None = None
    jitter_ms: float | None = None
    lost_packets: int | None = None
    packets: int | None = None
    lost_percent: float | None = None

    @property
    def mbit_per_second(self) -> float:
        return self.bits_per_second / 1e6

    def __str__(self) -> str:
        text = f"iperf3 {self.protocol}: {self.mbit_per_second:.2f} Mbit/s over {self.seconds:g} s"
        if self.retransmits is not None:
            text += f", {self.retransmits} retransmits"
        if self.jitter_ms is not None:
            text += f", jitter {self.jitter_ms:.3f} ms, {self.lost_packets}/{self.packets} lost"
        return text


def parse_iperf(text: str) -> IperfResult:
    """Parse the report of ``iperf3 -c ... -J`` (client side, TCP or UDP).

    Raises:
        LabError: it is not iperf3's JSON, or reports an error (the message has it).
    """
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabError(f"iperf3 printed no JSON report ({exc}): {text[-300:]!r}") from None
    if not isinstance(report, Mapping) or "error" in report or "end" not in report:
        error = report.get("error", "no 'end' section") if isinstance(report, Mapping) else report
        raise LabError(f"iperf3 failed: {error}")
    end: Mapping[str, Any] = report["end"]
    if report.get("start", {}).get("test_start", {}).get("protocol") == "UDP":
        summary = end["sum"]
        received = end.get("sum_received", summary)
        return IperfResult(
            "UDP", float(summary["seconds"]), float(received["bits_per_second"]),
            float(end.get("sum_sent", summary)["bits_per_second"]),
            jitter_ms=float(summary["jitter_ms"]), lost_packets=int(summary["lost_packets"]),
            packets=int(summary["packets"]), lost_percent=float(summary["lost_percent"]),
        )
    sent, received = end["sum_sent"], end["sum_received"]
    return IperfResult(
        "TCP", float(received["seconds"]), float(received["bits_per_second"]),
        float(sent["bits_per_second"]), retransmits=int(sent.get("retransmits", 0)),
    )


# -- ping_all -------------------------------------------------------------------------
def ping_all_command(addresses: Sequence[str], *, count: int = 1, wait: float = 3) -> str:
    """One shell command that pings every address at once and prints ``ok ADDRESS`` or
    ``lost ADDRESS`` for each."""
    quoted = " ".join(shlex.quote(a) for a in addresses)
    return (
        f"for a in {quoted}; do "
        f'(ping -n -c {count} -W {wait:g} "$a" >/dev/null 2>&1 && echo "ok $a" || echo "lost $a") & '
        "done; wait"
    )


def answered(output: str) -> set[str]:
    """The addresses ``ok`` in the output of :func:`ping_all_command`."""
    words = output.split()
    return {words[i + 1] for i in range(0, len(words) - 1, 2) if words[i] == "ok"}


@dataclass
class PingMatrix:
    """Who reached whom: ``matrix[source][destination]`` is True when a reply came
    back. Truthy when every pair answered; its str is a table for assertion messages::

        assert netlab.ping_all(), "not all pairs answered"  # the table is shown
    """

    matrix: dict[str, dict[str, bool]] = field(default_factory=dict)

    @property
    def unreachable(self) -> list[tuple[str, str]]:
        """The (source, destination) pairs with no reply, in order."""
        return [(s, d) for s, row in self.matrix.items() for d, ok in row.items() if not ok]

    @property
    def pairs(self) -> int:
        return sum(len(row) for row in self.matrix.values())

    def __bool__(self) -> bool:
        return not self.unreachable

    def __str__(self) -> str:
        width = max((len(n) for n in self.matrix), default=0)
        lines = [
            f"{source:<{width}} -> " + " ".join(d if ok else "X" * len(d) for d, ok in row.items())
            for source, row in self.matrix.items()
        ]
        lost = len(self.unreachable)
        lines.append(f"{self.pairs - lost}/{self.pairs} pairs answered" + (
            ": unreachable " + ", ".join(f"{s}->{d}" for s, d in self.unreachable) if lost else ""
        ))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<PingMatrix\n{self}>"
