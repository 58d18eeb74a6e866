"""Results of ``ping`` run in a guest, parsed from iputils' (or busybox's) summary."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SUMMARY = re.compile(
    r"(?P<sent>\d+) packets transmitted, (?P<received>\d+) (?:packets )?received"
    r"(?:, \+(?P<errors>\d+) errors)?(?:, \+\d+ duplicates)?, (?P<loss>[\d.]+)% packet loss"
)
_RTT = re.compile(
    r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = "
    r"(?P<min>[\d.]+)/(?P<avg>[\d.]+)/(?P<max>[\d.]+)(?:/(?P<mdev>[\d.]+))? ms"
)


@dataclass
class PingResult:
    """Truthy when at least one reply came back.

    ``rtt_*`` are in milliseconds, ``None`` when no reply came back.
    """

    destination: str
    sent: int
    received: int
    loss_percent: float
    errors: int = 0
    rtt_min: float | None = None
    rtt_avg: float | None = None
    rtt_max: float | None = None
    rtt_mdev: float | None = None
    output: str = ""
    status: int = 0

    def __bool__(self) -> bool:
        return self.received > 0

    def __repr__(self) -> str:
        # what an `assert vm.ping(...)` failure shows: the summary, not every field
        return f"<PingResult {self}>"

    def __str__(self) -> str:
        rtt = f", rtt avg {self.rtt_avg:.2f} ms" if self.rtt_avg is not None else ""
        if self.sent == 0:
            # nothing went out: say why (e.g. "connect: Network is unreachable")
            reason = self.output.strip().splitlines()[-1] if self.output.strip() else "no output"
            return f"ping {self.destination}: nothing sent ({reason})"
        return (
            f"ping {self.destination}: {self.received}/{self.sent} replies "
            f"({self.loss_percent:g}% loss){rtt}"
        )


def parse_ping(destination: str, output: str, status: int = 0) -> PingResult:
    """Parse ping's output. Output without a summary (e.g. "Network is unreachable")
    counts as nothing sent and nothing received."""
    summary = _SUMMARY.search(output)
    if summary is None:
        return PingResult(destination, 0, 0, 100.0, output=output, status=status)
    result = PingResult(
        destination,
        sent=int(summary["sent"]),
        received=int(summary["received"]),
        loss_percent=float(summary["loss"]),
        errors=int(summary["errors"] or 0),
        output=output,
        status=status,
    )
    rtt = _RTT.search(output)
    if rtt is not None:
        result.rtt_min = float(rtt["min"])
        result.rtt_avg = float(rtt["avg"])
        result.rtt_max = float(rtt["max"])
        result.rtt_mdev = float(rtt["mdev"]) if rtt["mdev"] else None
    return result
