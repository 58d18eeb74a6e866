"""What the labs of one test session share: the guest image, the accelerator decision,
the SSH key pair, and a private runtime directory removed at the end."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .constants import BootMode, PcapMode
from .errors import LabError
from .owner import Owner
from .trust import trusted_directory
from .untrusted import DEFAULT_OUTPUT_LIMIT

if TYPE_CHECKING:
    from .accel import AccelDecision
    from .budget import Budget
    from .image import GuestImage
    from .lab import Lab
    from .labcontext import LabSettings
    from .ssh import SessionKey
    from .templates import TemplateStore

# the lab's modules (QEMU, SSH, netlink) are imported when a lab needs them: the pytest
# plugin makes a session in every run, most of which make no lab

log = logging.getLogger(__name__)


def runtime_base() -> Path:
    """Where private runtime directories go: /run/netlab as root, else the user's runtime
    dir (``$XDG_RUNTIME_DIR/netlab``, or ``/tmp/netlab-<uid>`` where there is none)."""
    if os.geteuid() == 0:
        base = Path("/run/netlab")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "netlab"
    else:
        base = Path(tempfile.gettempdir()) / f"netlab-{os.geteuid()}"
    return trusted_directory(
        base, "the runtime directory",
        "remove it, or set XDG_RUNTIME_DIR to a directory that only you own and can write",
    )


@dataclass
class NetlabSession:
    """Created once per pytest process; ``close()`` removes the key and runtime dir."""

    accel_request: str = "auto"
    boot: BootMode = "snapshot"
    boot_timeout: float = 120.0
    command_timeout: float = 60.0
    pcap: PcapMode = "off"
    artifacts: Path | None = None  # --netlab-artifacts: a directory per test under it
    packages: tuple[str, ...] = ()  # --netlab-packages: every lab's default is a package image
    progress: Callable[[str], None] | None = None  # shows image build steps on the terminal
    max_guests: int | None = None  # --netlab-max-guests: guests booting at once, machine-wide
    max_memory: int | None = None  # --netlab-max-memory: MiB of guests, machine-wide
    report: Callable[[str], None] | None = None  # where "waiting for room" lines go
    output_limit: int = DEFAULT_OUTPUT_LIMIT  # --netlab-output-limit
    _runtime: Path | None = None
    _key: SessionKey | None = None
    _image: GuestImage | None = None
    _accel: AccelDecision | None = None
    _templates: TemplateStore | None = None
    _budget: Budget | None = None

    @property
    def runtime_dir(self) -> Path:
        if self._runtime is None:
            # mkdtemp makes it 0700: the private key lives here
            # named by its owner (see .cleanup)
            self._runtime = Path(tempfile.mkdtemp(prefix=f"{Owner.me().tag}-", dir=runtime_base()))
        return self._runtime

    @property
    def key(self) -> SessionKey:
        if self._key is None:
            from .ssh import SessionKey

            self._key = SessionKey.generate(self.runtime_dir)
        return self._key

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            from .image import default_image

            self._image = default_image(progress=self.progress)
            if self.packages:
                from .package_image import package_image

                self._image = package_image(self.packages, base=self._image, progress=self.progress)
        return self._image

    @property
    def accel(self) -> AccelDecision:
        if self._accel is None:
            from .accel import decide_accelerator

            self._accel = decide_accelerator(self.accel_request)
        return self._accel

    def describe(self) -> str:
        """One line on the accelerator, boot mode and guest image, from what is known
        without building the image or booting a guest under KVM (a run whose tests make
        no lab pays for neither)."""
        from .accel import known_decision
        from .image import image_info

        accel = self._accel or known_decision(self.accel_request)
        accel_text = str(accel) if accel else f"{self.accel_request} (decided at the first lab)"
        if self._image is not None:
            image_text = str(self._image.initrd.parent)
        else:
            info = image_info()
            image_text = str(info["path"]) + ("" if info["built"] else " (built at the first lab)")
        return f"accelerator {accel_text}, {self.boot} boot, guest image {image_text}"

    @property
    def budget(self) -> Budget:
        """The machine-wide guest budget, with this session's limits (shared with other
        users' runs where set-up made the shared directory, else with this user's only)."""
        if self._budget is None:
            from .budget import Budget, budget_place

            self._budget = Budget(budget_place(runtime_base()).directory, self.max_guests,
                                  self.max_memory, report=self.report)
        return self._budget

    def settings(self) -> LabSettings:
        from .image import cache_root
        from .labcontext import LabSettings
        from .qemu import qemu_version
        from .templates import TemplateStore

        if self._templates is None:
            self._templates = TemplateStore(cache_root() / "templates", qemu_version())
        return LabSettings(
            accel=self.accel.accel, boot=self.boot, templates=self._templates,
            boot_timeout=self.boot_timeout, command_timeout=self.command_timeout,
            pcap=self.pcap != "off", output_limit=self.output_limit, budget=self.budget,
            progress=self.progress,
        )

    def new_lab(self, workdir: Path) -> Lab:
        from .lab import Lab

        return Lab(workdir, self.image, self.key, self.settings())

    def close(self) -> None:
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
            self._key = None


class LabFactory:
    """Makes labs of one session under *workdir*; ``close()`` tears down those still open.

    For fixtures of module or session scope, which the per-test ``netlab`` fixture
    cannot serve.
    """

    def __init__(self, session: NetlabSession, workdir: Path) -> None:
        self.session = session
        self.workdir = workdir
        self._labs: list[Lab] = []

    def __call__(self) -> Lab:
        lab = self.session.new_lab(self.workdir / f"lab{len(self._labs) + 1}")
        self._labs.append(lab)
        return lab

    def close(self) -> None:
        """Tear down every lab this factory made (idempotent).

        Raises:
            LabError: a lab could not be torn down (after trying all of them).
        """
        failures = []
        for lab in reversed(self._labs):
            try:
                lab.close()
            except LabError as exc:
                failures.append(str(exc))
        self._labs.clear()
        if failures:
            raise LabError("; ".join(failures))
