"""Link impairment: delay, jitter, loss and a rate limit on a guest NIC, as a netem
qdisc on the NIC inside the guest.

Why in the guest and not on the TAP in the lab namespace: the host kernel may lack
``sch_netem`` (the project's own machines do: ``CONFIG_NET_SCH_NETEM`` is not set),
while the guest image always has it. A qdisc shapes what a device sends, so an
impairment applies to what the guest sends on that NIC; a delay of 100 ms on one NIC
adds 100 ms to every round trip through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


def _number(value: object, what: str, low: float, high: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{what} {value!r} is not accepted: give a number from {low:g} to {high:g}{unit}")
    return float(value)


@dataclass(frozen=True)
class Impairment:
    """What netem does to a NIC's traffic; all zero/None is no impairment."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate_kbit: int | None = None

    def validated(self) -> Impairment:
        """Return self if every value is usable.

        Raises:
            ConfigError: a value out of range, or jitter without a delay.
        """
        _number(self.delay_ms, "delay_ms", 0, 60_000, " ms")
        _number(self.jitter_ms, "jitter_ms", 0, 60_000, " ms")
        _number(self.loss_percent, "loss_percent", 0, 100, " %")
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
        return not (self.delay_ms or self.loss_percent or self.rate_kbit)

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
        if self.rate_kbit:
            argv += ["rate", f"{self.rate_kbit}kbit"]
        # netem's default queue (1000 packets) drops at low rates under load; keep more
        argv += ["limit", "10000"]
        return argv
