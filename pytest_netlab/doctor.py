"""``pytest-netlab doctor``: can pytest-netlab run on this machine? Each check gives a one-line
verdict and, when it fails, the fix. A check marked ``required`` failing means the plugin
cannot run (the command then exits non-zero); the others limit what it can do."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .budget import available_memory, guest_cost
from .constants import GUEST_MEMORY_DEFAULT, NAMESPACE_PREFIX
from .errors import NetlabError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    verdict: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.required else "warn")
        text = f"{mark} {self.name}: {self.verdict}"
        return text + (f"\n     fix: {self.fix}" if not self.ok and self.fix else "")


def _qemu() -> Check:
    from .qemu import find_qemu, qemu_version

    try:
        path = find_qemu()
    except NetlabError as exc:
        return Check("QEMU", False, str(exc), "apt-get install qemu-system-x86")
    return Check("QEMU", True, f"{qemu_version()} ({path})")


def _qemu_user() -> Check:
    """Who QEMU will run as (never root), and whether its seccomp sandbox works."""
    from .privileges import CREATE_USER, qemu_identity, sandbox_problem
    from .qemu import find_qemu

    try:
        identity = qemu_identity()
        qemu = find_qemu()
    except NetlabError as exc:
        return Check("QEMU's user", False, str(exc), f"{CREATE_USER} (setup.sh does)")
    problem = sandbox_problem(qemu, identity)
    if problem is not None:
        return Check(
            "QEMU's user", False, f"{identity.describe()}; QEMU cannot start in its sandbox: {problem}",
            "a QEMU built with seccomp (Debian's qemu-system-x86 is)",
        )
    return Check("QEMU's user", True, f"{identity.describe()}, no capabilities, seccomp sandbox available")


def _kvm() -> Check:
    from .accel import decide_accelerator, kvm_device_usable
    from .privileges import rootless

    present = "present" if os.path.exists("/dev/kvm") else "absent"
    problem = kvm_device_usable()
    if problem is not None:
        fix = "load kvm_intel/kvm_amd and give access to /dev/kvm, or accept TCG"
        if rootless() and os.path.exists("/dev/kvm") and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            fix = "sudo usermod -a -G kvm $USER (then log in again), or accept TCG"
        return Check(
            "KVM", False, f"/dev/kvm {present}; not usable ({problem}): guests run under TCG (slower)",
            fix, required=False,
        )
    try:
        decision = decide_accelerator("auto")
    except NetlabError as exc:
        return Check("KVM", False, f"/dev/kvm {present}; probe failed: {exc}", required=False)
    if decision.accel == "kvm":
        return Check("KVM", True, "/dev/kvm present and a guest boots under KVM: KVM used")
    reason = decision.reason.splitlines()[0].split("; console log")[0]
    return Check(
        "KVM", False, f"/dev/kvm {present}, but {reason}: TCG used (guests slower)",
        "nothing to do: TCG works; on a VM host enable nested virtualization for KVM",
        required=False,
    )


def _mode() -> Check:
    from .privileges import rootless

    if rootless():
        return Check(
            "mode", True,
            f"rootless (uid {os.geteuid()}): each lab's namespace is owned by a user namespace "
            "of its own; QEMU runs as you",
        )
    return Check("mode", True, "root: lab namespaces under /run/netns; QEMU runs as its own user")


def _tun() -> Check:
    from .privileges import rootless

    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        fix = "modprobe tun (in a container: pass --device /dev/net/tun)"
        if rootless() and exc.errno == errno.EACCES:
            fix = "sudo chmod 0666 /dev/net/tun (Debian's udev default; setup.sh does)"
        return Check("/dev/net/tun", False, f"cannot open: {exc.strerror}", fix)
    os.close(fd)
    return Check("/dev/net/tun", True, "can be opened")


def _namespaces() -> Check:
    from .netns import LabNamespace
    from .privileges import rootless

    namespace = LabNamespace(f"{NAMESPACE_PREFIX}{os.getpid()}-doctor")
    try:
        namespace.create()
        namespace.add_bridge("br-doctor")
    except NetlabError as exc:
        if rootless():
            from .subids import userns_disabled

            disabled = userns_disabled()
            why = disabled.why if disabled else "no sysctl says why: see the message"
            return Check(
                "namespaces", False, f"{exc} [{why}]", "allow unprivileged user namespaces, or run as root",
            )
        return Check(
            "namespaces", False, str(exc),
            "run as root, or give CAP_SYS_ADMIN and CAP_NET_ADMIN (a container: --privileged)",
        )
    finally:
        with contextlib.suppress(NetlabError):
            namespace.close()
    return Check("namespaces", True, "a network namespace with a bridge can be created")


def _qdiscs() -> Check:
    from .netns import host_has_qdisc

    netem, tbf = host_has_qdisc("netem"), host_has_qdisc("tbf")
    if netem and tbf:
        return Check("qdiscs", True, "netem and tbf: vm.impair() shapes the traffic to a guest on its TAP")
    missing = [kind for kind, ok in (("netem", netem), ("tbf", tbf)) if not ok]
    moved = " and ".join(
        what for what, ok in (("delay, jitter and loss", netem), ("a rate alone", tbf)) if not ok
    )
    return Check(
        "qdiscs", False,
        f"the host kernel has no {' and '.join(missing)}: vm.impair() puts {moved} in the guest "
        "(which shapes the traffic from it, not to it); where='tap' refuses them",
        f"modprobe {' '.join(f'sch_{q}' for q in missing)}, or a kernel with "
        + " and ".join(f"CONFIG_NET_SCH_{q.upper()}" for q in missing),
        required=False,
    )


def _image() -> Check:
    from .image import image_info

    try:
        info = image_info()
    except NetlabError as exc:
        return Check("guest image", False, str(exc), "reinstall pytest-netlab")
    if not info["built"]:
        return Check(
            "guest image", False, f"not built yet (would go to {info['path']}); the first test builds it",
            "pytest-netlab image build", required=False,
        )
    variants = info["variants"]
    assert isinstance(variants, dict)
    sizes = variants[info["default_variant"]].get("sizes", {})
    total = sum(sizes.values()) / 2**20 if isinstance(sizes, dict) else 0.0
    return Check("guest image", True, f"built: {info['path']} ({total:.1f} MiB)")


def _package_builds() -> Check:
    """Whether package images can be built by this user (root, or mmdebstrap's unshare mode)."""
    from .subids import describe, unshare_missing

    missing = unshare_missing()
    if missing is None:
        return Check("package image builds", True, describe(), required=False)
    return Check(
        "package image builds", False, f"{describe()}, but {missing.why}", missing.fix, required=False,
    )


def _program(name: str, package: str, use: str, required: bool) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, False, f"not found ({use})", f"apt-get install {package}", required)
    return Check(name, True, f"{path} ({use})", required=required)


def _memory(guests: int) -> Check:
    available = available_memory()
    need = guests * guest_cost(GUEST_MEMORY_DEFAULT)
    size = GUEST_MEMORY_DEFAULT
    verdict = f"{available} MiB available; {guests} guests of {size} MiB need about {need} MiB"
    if available < need:
        return Check("memory", False, verdict, "free memory or run fewer guests (pytest -n)", required=False)
    return Check("memory", True, verdict)


def _budget() -> Check:
    from .budget import Budget, budget_place
    from .session import runtime_base

    return Check(
        "guest budget", True,
        Budget(budget_place(runtime_base()).directory).describe()
        + " (set with --netlab-max-guests and --netlab-max-memory)",
        required=False,
    )


def _budget_sharing() -> Check:
    """Whether root's and every user's runs share the budget (setup.sh's directory)."""
    from . import budget_records
    from .session import runtime_base

    place = budget_records.budget_place(runtime_base())
    fix = f"sudo ./setup.sh (it makes {budget_records.SHARED_BUDGET_DIR}, owned by root, mode 1777)"
    return Check("budget sharing", place.shared, place.describe(), fix, required=False)


def checks(guests: int = 4) -> Iterator[Check]:
    """Every check, in order; each is run when the iterator reaches it."""
    steps: list[Callable[[], Check]] = [
        _mode, _qemu, _qemu_user, _tun, _namespaces, _qdiscs, _kvm, _image, _package_builds,
        lambda: _program("nsenter", "util-linux", "runs commands in lab namespaces", True),
        lambda: _program("setpriv", "util-linux", "children die with their owner (--pdeathsig)", True),
        lambda: _program("tcpdump", "tcpdump", "packet capture, --netlab-pcap", False),
        lambda: _program("dnsmasq", "dnsmasq-base", "DHCP on a host-only bridge", False),
        lambda: _program("tc", "iproute2", "lab namespace state in the evidence", False),
        lambda: _memory(guests), _budget, _budget_sharing,
    ]
    for step in steps:
        started = time.monotonic()
        try:
            check = step()
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check
            check = Check(getattr(step, "__name__", "check"), False, f"{type(exc).__name__}: {exc}")
        if time.monotonic() - started > 2:
            check = Check(
                check.name, check.ok, f"{check.verdict} ({time.monotonic() - started:.1f} s)",
                check.fix, check.required,
            )
        yield check
