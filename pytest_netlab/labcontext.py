"""What a lab's bridges and guests need of it: :class:`LabSettings`, how it boots and
drives guests, and :class:`LabContext`, the narrow view of one lab that a
:class:`~pytest_netlab.bridge.Bridge` and a :class:`~pytest_netlab.guest.VM` are given
instead of the :class:`~pytest_netlab.lab.Lab` itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .addressing import Address, AddressPlan
from .budget import Budget
from .constants import Accelerator, BootMode
from .netns import LabNamespace
from .ssh import SessionKey
from .templates import TemplateStore
from .untrusted import DEFAULT_OUTPUT_LIMIT

if TYPE_CHECKING:
    from .bridge import Bridge
    from .guest import VM


@dataclass(frozen=True)
class LabSettings:
    """How a lab boots its guests; the plugin fills it from options and ini values."""

    accel: Accelerator = "tcg"
    boot: BootMode = "snapshot"  # or "cold": see pytest_netlab.templates
    templates: TemplateStore | None = None
    boot_timeout: float = 120.0
    command_timeout: float = 60.0
    pcap: bool = False  # record every bridge to a pcap file (see Lab.record_bridges)
    progress: Callable[[str], None] | None = None  # where a package image build reports its steps
    budget: Budget | None = None  # the machine-wide guest budget (None: no limit)
    # bytes kept of each stream of a command's output and of each console log
    output_limit: int = DEFAULT_OUTPUT_LIMIT



@dataclass(frozen=True)
class LabContext:
    """One lab as its bridges and guests see it. The lab owns each part; the address
    plan is the one place that says whose an address is (*address_owner* asks it, with
    the lab's bridges and the addresses its guests give by hand)."""

    name: str
    namespace: LabNamespace
    settings: LabSettings
    workdir: Path
    key: SessionKey
    plan: AddressPlan
    bridges: Mapping[str, Bridge]  # the lab's, as they are made
    vms: Mapping[str, VM]  # the same for its guests
    address_owner: Callable[[Address], str | None]
