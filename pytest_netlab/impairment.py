"""Link impairment: delay, jitter, loss, corruption, duplication, reordering and a rate
limit on a guest NIC.

A qdisc shapes what a device *sends*, so where it sits decides which direction is
impaired:

- ``where="tap"``: on the NIC's TAP in the lab namespace (through pyroute2), so it
  shapes the traffic going **to** the guest. Delay, jitter and loss need the host
  kernel's ``sch_netem``; a rate alone is a ``tbf`` qdisc.
- ``where="guest"``: a netem qdisc on ``ethN`` inside the guest (through ``tc``), so it
  shapes the traffic coming **from** the guest. The guest image always has netem.
- ``where="auto"`` (the default): the TAP when the host kernel has the qdisc needed,
  else the guest. Some hosts (the project's own machines among them) lack
  ``sch_netem``: there delay and loss go to the guest, a rate alone to the TAP.

Either way a delay of 100 ms on one NIC adds 100 ms to every round trip through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from .errors import ConfigError


def _number(value: object, what: str, low: float, high: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{what} {value!r} is not accepted: give a number from {low:g} to {high:g}{unit}")
    return float(value)


Where = Literal["auto", "tap", "guest"]
PLACES = ("auto", "tap", "guest")
# tbf: how long a packet may wait for tokens before it is dropped; long enough that a
# TCP sender at a low rate fills the queue rather than losing packets
TBF_LATENCY_MS = 200
NETEM_LIMIT = 10000  # packets; netem's default of 1000 drops at low rates under load


@dataclass(frozen=True)
class Impairment:
    """What a NIC's traffic suffers, and where (see the module's doc); all zero/None
    is no impairment."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate_kbit: int | None = None
    where: Where = "auto"
    corrupt_percent: float = 0.0  # packets with a bit flipped
    duplicate_percent: float = 0.0  # packets sent twice
    reorder_percent: float = 0.0  # packets sent at once, ahead of the delayed others (needs a delay)

    def validated(self) -> Impairment:
        """Return self if every value is usable.

        Raises:
            ConfigError: a value out of range, jitter without a delay, or an unknown *where*.
        """
        if self.where not in PLACES:
            raise ConfigError(
                f"where {self.where!r} is not accepted: give 'auto', 'tap' (shapes traffic to "
                "the guest) or 'guest' (shapes traffic from the guest)"
            )
        _number(self.delay_ms, "delay_ms", 0, 60_000, " ms")
        _number(self.jitter_ms, "jitter_ms", 0, 60_000, " ms")
        _number(self.loss_percent, "loss_percent", 0, 100, " %")
        for name in ("corrupt_percent", "duplicate_percent", "reorder_percent"):
            _number(getattr(self, name), name, 0, 100, " %")
        if self.reorder_percent and not self.delay_ms:
            raise ConfigError(
                f"reorder_percent {self.reorder_percent:g} needs a delay: netem reorders by "
                "sending some packets at once and delaying the rest, so give delay_ms above 0 too"
            )
        if self.jitter_ms and not self.delay_ms:
            raise ConfigError(
                f"jitter_ms {self.jitter_ms:g} needs a delay: netem varies the delay, "
                "so give delay_ms above 0 too"
            )
        if self.jitter_ms > self.delay_ms:
            raise ConfigError(
                f"jitter_ms {self.jitter_ms:g} is larger than delay_ms {self.delay_ms:g}: "
                "give a jitter at most as large as the delay"
            )
        if self.rate_kbit is not None and (
            isinstance(self.rate_kbit, bool) or not isinstance(self.rate_kbit, int)
            or not 8 <= self.rate_kbit <= 100_000_000
        ):
            raise ConfigError(
                f"rate_kbit {self.rate_kbit!r} is not accepted: give a whole number of "
                "kbit/s from 8 to 100000000, or None for no limit"
            )
        return self

    @property
    def none(self) -> bool:
        return not (self.delay_ms or self.loss_percent or self.rate_kbit or self._netem_only)

    @property
    def _netem_only(self) -> bool:
        """Corruption, duplication or reordering asked for: netem's alone."""
        return bool(self.corrupt_percent or self.duplicate_percent or self.reorder_percent)

    @property
    def tap_qdisc_kind(self) -> str | None:
        """The qdisc that does this on a TAP: netem for delay/jitter/loss (with its own
        rate), tbf for a rate alone, None for nothing."""
        if self.delay_ms or self.loss_percent or self._netem_only:
            return "netem"
        return "tbf" if self.rate_kbit else None

    def placed(self, host_has_qdisc: Callable[[str], bool]) -> Impairment:
        """This impairment with *where* settled to ``"tap"`` or ``"guest"``;
        *host_has_qdisc(kind)* says whether the host kernel has a qdisc kind.

        Raises:
            ConfigError: ``where="tap"`` and the host kernel lacks the qdisc needed.
        """
        kind = self.tap_qdisc_kind
        if self.where == "guest" or kind is None:  # nothing to place: a removal
            return self
        if host_has_qdisc(kind):
            return replace(self, where="tap")
        if self.where == "tap":
            raise ConfigError(
                f"where='tap' needs the {kind} qdisc, which this host's kernel lacks "
                f"(no sch_{kind}): use where='guest' (shapes traffic from the guest) instead"
            )
        return replace(self, where="guest")

    def tap_qdisc(self) -> tuple[str, dict[str, Any]] | None:
        """The ``IPRoute.tc("replace", kind, index, 0x10000, **parameters)`` arguments
        that set this on a TAP: ``(kind, parameters)``, or None for no qdisc."""
        kind = self.tap_qdisc_kind
        if kind == "netem":
            parameters: dict[str, Any] = {"limit": NETEM_LIMIT}
            if self.delay_ms:
                parameters["delay"] = round(self.delay_ms * 1000)  # µs
                if self.jitter_ms:
                    parameters["jitter"] = round(self.jitter_ms * 1000)
            if self.loss_percent:
                parameters["loss"] = self.loss_percent
            for name, key in (("corrupt_percent", "prob_corrupt"), ("duplicate_percent", "duplicate"),
                              ("reorder_percent", "prob_reorder")):
                if getattr(self, name):
                    parameters[key] = getattr(self, name)
            if self.rate_kbit:
                parameters["rate"] = f"{self.rate_kbit}kbit"
            return kind, parameters
        if kind == "tbf":
            assert self.rate_kbit is not None
            rate_bytes = self.rate_kbit * 1000 // 8
            # a burst of 10 ms at the rate, at least two full frames
            burst = max(rate_bytes // 100, 2 * 1514)
            return kind, {"rate": f"{self.rate_kbit}kbit", "burst": burst, "latency": f"{TBF_LATENCY_MS}ms"}
        return None

    def tc_argv(self, device: str) -> list[str]:
        """The ``tc`` command that sets this impairment on *device* (replacing any)."""
        if self.none:
            return ["tc", "qdisc", "del", "dev", device, "root"]
        argv = ["tc", "qdisc", "replace", "dev", device, "root", "netem"]
        if self.delay_ms:
            argv += ["delay", f"{self.delay_ms:g}ms"]
            if self.jitter_ms:
                argv += [f"{self.jitter_ms:g}ms"]
        if self.loss_percent:
            argv += ["loss", f"{self.loss_percent:g}%"]
        for name, word in (("corrupt_percent", "corrupt"), ("duplicate_percent", "duplicate"),
                           ("reorder_percent", "reorder")):
            if getattr(self, name):
                argv += [word, f"{getattr(self, name):g}%"]
        if self.rate_kbit:
            argv += ["rate", f"{self.rate_kbit}kbit"]
        argv += ["limit", str(NETEM_LIMIT)]
        return argv
