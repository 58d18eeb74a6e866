"""The settings of a run, read from the ``--netlab-*`` options and their ``netlab_*`` ini
values and checked: an option given on the command line wins over its ini value, and a
bad value is a :class:`.ConfigError` that names it and what is accepted, raised before
anything is made.

:mod:`.plugin` declares the options; this module knows nothing of pytest: it reads any
object with ``getoption`` and ``getini``, as a ``pytest.Config`` has them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from .constants import ACCEL_CHOICES, BOOT_MODES, AccelRequest, BootMode, PcapMode
from .errors import ConfigError
from .session import NetlabSession
from .untrusted import parse_output_limit

# budget and package_image are imported by the readers that need them: the plugin loads
# this module in every run of a project with pytest-netlab


class OptionSource(Protocol):
    """Where the values are read: ``pytest.Config``."""

    def getoption(self, name: str) -> Any: ...

    def getini(self, name: str) -> Any: ...


@dataclass(frozen=True)
class KeepPolicy:
    """--netlab-keep-on-fail, --netlab-pause and --netlab-keep-timeout."""

    on_fail: bool
    pause: bool
    timeout: float


@dataclass(frozen=True)
class NetlabOptions:
    """The run's --netlab-* options (or their ini values), checked."""

    accel: AccelRequest
    boot: BootMode
    boot_timeout: float
    command_timeout: float
    keep: KeepPolicy
    pcap: PcapMode
    artifacts: Path | None
    packages: tuple[str, ...]
    output_limit: int
    max_guests: int | None
    max_memory: int | None

    def session(self, report: Callable[[str], None], progress: Callable[[str], None]) -> NetlabSession:
        """The run's session with these settings; *report* and *progress* show lines to
        the person watching (a lab waiting for room, the steps of an image build)."""
        return NetlabSession(
            accel_request=self.accel, boot=self.boot, boot_timeout=self.boot_timeout,
            command_timeout=self.command_timeout, pcap=self.pcap, output_limit=self.output_limit,
            packages=self.packages, artifacts=self.artifacts, max_guests=self.max_guests,
            max_memory=self.max_memory, report=report, progress=progress,
        )


def read_options(source: OptionSource) -> NetlabOptions:
    """The --netlab-* options of *source*, each given on the command line or else its ini value.

    Raises:
        ConfigError: a value is not accepted (the first bad one, in the order of the
            fields of :class:`NetlabOptions`).
    """
    accel = _choice(source, "accel", ACCEL_CHOICES)
    boot = _choice(source, "boot", BOOT_MODES)
    timeouts = {name: _timeout(source, name) for name in ("boot", "command", "keep")}
    packages = _packages(source)
    output_limit = parse_output_limit(
        _given(source, "output-limit", blank_is_absent=True), "netlab output limit"
    )
    max_guests, max_memory = _budget_limits(source)
    artifacts = source.getoption("--netlab-artifacts")
    return NetlabOptions(
        accel=cast(AccelRequest, accel), boot=cast(BootMode, boot),
        boot_timeout=timeouts["boot"], command_timeout=timeouts["command"],
        keep=KeepPolicy(
            on_fail=source.getoption("--netlab-keep-on-fail"), pause=source.getoption("--netlab-pause"),
            timeout=timeouts["keep"],
        ),
        pcap=source.getoption("--netlab-pcap"), artifacts=Path(artifacts).resolve() if artifacts else None,
        packages=packages, output_limit=output_limit, max_guests=max_guests, max_memory=max_memory,
    )


def _given(source: OptionSource, name: str, *, blank_is_absent: bool = False) -> Any:
    """--netlab-NAME as given on the command line, else the ini value netlab_NAME; with
    *blank_is_absent*, an empty option is not given either."""
    value = source.getoption(f"--netlab-{name}")
    if value is None or (blank_is_absent and not value):
        return source.getini(f"netlab_{name.replace('-', '_')}")
    return value


def _choice(source: OptionSource, name: str, choices: tuple[str, ...]) -> str:
    value = _given(source, name)
    if value not in choices:
        raise ConfigError(f"netlab_{name} = {value!r} is not accepted: use one of {', '.join(choices)}")
    return str(value)


def _timeout(source: OptionSource, name: str) -> float:
    """--netlab-NAME-timeout in seconds; an explicit 0 is refused, not replaced by the ini value."""
    raw = _given(source, f"{name}-timeout")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"netlab {name} timeout {raw!r} is not accepted: give a number of seconds above 0")
    return seconds


def _packages(source: OptionSource) -> tuple[str, ...]:
    raw = _given(source, "packages")
    if not str(raw).replace(",", " ").strip():
        return ()
    from .package_image import parse_packages

    try:
        return parse_packages(str(raw))
    except ConfigError as exc:
        raise ConfigError(f"netlab packages {raw!r}: {exc}") from None


def _budget_limits(source: OptionSource) -> tuple[int | None, int | None]:
    """--netlab-max-guests and --netlab-max-memory; ``None``: sized from the machine."""
    guests = _given(source, "max-guests", blank_is_absent=True)
    memory = _given(source, "max-memory", blank_is_absent=True)
    if not (guests or memory):
        return None, None
    from .budget import parse_guests, parse_memory  # only now: most runs set neither

    return (parse_guests(guests) if guests else None), (parse_memory(memory) if memory else None)
