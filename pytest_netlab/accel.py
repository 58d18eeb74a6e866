"""Choosing the accelerator: KVM only when a guest has been seen to boot under it.

``/dev/kvm`` existing proves nothing (on some hosts KVM aborts or hangs the guest before
its kernel runs), so the evidence is a real boot of the default guest under KVM, made
once per host boot and QEMU version and cached.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .constants import ACCEL_CHOICES, Accelerator
from .errors import AcceleratorError, BootTimeout, ConfigError, LabError
from .privileges import qemu_identity
from .qemu import MachineConfig, QemuMachine, qemu_version

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class AccelDecision:
    """Which accelerator guests use, and why."""

    accel: Accelerator
    reason: str

    def __str__(self) -> str:
        return f"{self.accel} ({self.reason})"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_device_usable() -> str | None:
    """``None`` if /dev/kvm can be opened, by QEMU's user too, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    os.close(fd)
    try:
        identity = qemu_identity()
    except ConfigError:
        return None  # no QEMU at all then: the lab says so
    if not identity.may(Path("/dev/kvm"), os.R_OK | os.W_OK):
        return (f"/dev/kvm: QEMU's user {identity.name or identity.uid} may not open it "
                "(add that user to the group of /dev/kvm, usually kvm)")
    return None


def probe_kvm(timeout: float = PROBE_TIMEOUT) -> str | None:
    """Boot the default guest under KVM; ``None`` if it came up, else what went wrong."""
    from .image import default_image

    image = default_image()
    with tempfile.TemporaryDirectory(prefix="netlab-kvm-probe-") as tmp:
        machine = QemuMachine(
            MachineConfig(
                name="kvm-probe", kernel=image.kernel, initrd=image.initrd,
                cmdline=image.cmdline + " netlab.name=kvm-probe", accel="kvm", management=False,
            ),
            Path(tmp),
        )
        started = time.monotonic()
        try:
            machine.launch()
            machine.wait_ready(timeout)
        except BootTimeout:
            # (the console log went with the probe's temporary directory)
            return f"a guest did not boot under KVM within {timeout:g} s"
        except LabError as exc:
            first = str(exc).splitlines()[0]
            return f"a guest did not boot under KVM: {first}"
        finally:
            machine.shutdown(timeout=1.0)
        log.info("KVM probe: guest ready in %.2f s", time.monotonic() - started)
    return None


def decide_accelerator(requested: str = "auto", cache_dir: Path | None = None) -> AccelDecision:
    """Resolve *requested* (``auto``, ``kvm`` or ``tcg``) to the accelerator to use.

    Raises:
        ConfigError: *requested* is not one of the choices.
        AcceleratorError: ``kvm`` was requested but a guest does not boot under it.
    """
    if requested not in ACCEL_CHOICES:
        raise ConfigError(
            f"accelerator {requested!r} is not accepted: use one of {', '.join(ACCEL_CHOICES)}"
        )
    known = known_decision(requested, cache_dir)
    if known is not None:
        return known
    return _decide(requested, _cached_probe(cache_dir))  # boots the probe guest, once


def known_decision(requested: str, cache_dir: Path | None = None) -> AccelDecision | None:
    """What :func:`decide_accelerator` would answer, when that needs no guest booted
    under KVM (the probe is cached or /dev/kvm cannot be opened); else ``None``.

    Raises:
        AcceleratorError: ``kvm`` was requested but is known not to work.
    """
    if requested == "tcg":
        return AccelDecision("tcg", "requested")
    unusable = kvm_device_usable()
    if unusable is None:
        # read without the lock: a probe being written reads as none yet
        cached = _read_probe(*_probe_cache(cache_dir))
        if cached is None:
            return None
        unusable = cached[0]
    return _decide(requested, unusable)


def _decide(requested: str, unusable: str | None) -> AccelDecision:
    if unusable is None:
        return AccelDecision("kvm", "a guest booted under KVM" if requested == "auto" else "requested")
    if requested == "kvm":
        raise AcceleratorError(
            f"accelerator 'kvm' was requested but cannot be used: {unusable}; "
            "use --netlab-accel=tcg or auto"
        )
    return AccelDecision("tcg", f"KVM not usable: {unusable}")


def _probe_cache(cache_dir: Path | None) -> tuple[Path, dict[str, str]]:
    from .image import cache_root

    root = cache_dir or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = {"boot_id": _boot_id(), "qemu": qemu_version(), "format": "2", "qemu_uid": str(_qemu_uid())}
    return root / "kvm-probe.json", key


def _qemu_uid() -> int | None:
    """Whose QEMU the probe booted: another user may not open /dev/kvm."""
    try:
        return qemu_identity().uid
    except ConfigError:
        return None


def _read_probe(path: Path, key: dict[str, str]) -> tuple[str | None] | None:
    """The cached probe's answer (in a 1-tuple: it may be ``None``), or ``None``."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if cached.get("key") != key:
        return None
    return (cached.get("unusable"),)


def _cached_probe(cache_dir: Path | None) -> str | None:
    from filelock import FileLock

    path, key = _probe_cache(cache_dir)
    with FileLock(str(path) + ".lock"):
        cached = _read_probe(path, key)
        if cached is not None:
            return cached[0]
        unusable = probe_kvm()
        path.write_text(json.dumps({"key": key, "unusable": unusable}))
        return unusable
