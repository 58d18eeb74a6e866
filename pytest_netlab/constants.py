"""Names and choices several modules share, in a module without heavy imports: the pytest
plugin is loaded in every run of a project that installs pytest-netlab, labs or not."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

#: --netlab-accel / netlab_accel
AccelRequest = Literal["auto", "kvm", "tcg"]
ACCEL_CHOICES: tuple[AccelRequest, ...] = get_args(AccelRequest)
#: the accelerator guests run under, once decided (pytest_netlab.accel)
Accelerator = Literal["kvm", "tcg"]
#: --netlab-boot / netlab_boot: resumed from a saved state, or a full kernel boot
BootMode = Literal["snapshot", "cold"]
BOOT_MODES: tuple[BootMode, ...] = get_args(BootMode)
#: --netlab-pcap
PcapMode = Literal["off", "on-failure", "always"]
PCAP_MODES: tuple[PcapMode, ...] = get_args(PcapMode)
#: what a guest is: a Router has forwarding switches (lab.router(), role = "router" in a topology)
Role = Literal["host", "router"]
ROLES: tuple[Role, ...] = get_args(Role)
#: a lab's network namespace is netlab-<owner pid>-<lab number>
NAMESPACE_PREFIX = "netlab-"
#: where `ip netns` (and pyroute2) keep named network namespaces
NETNS_RUN_DIR = Path("/run/netns")
#: MiB of memory a guest may have (the default image needs about 80 MiB to boot), and its default
GUEST_MEMORY_RANGE = (96, 65536)
GUEST_MEMORY_DEFAULT = 128
#: virtual CPUs a guest may have
GUEST_CPU_RANGE = (1, 64)
#: the address that a NAT NIC's host ports have in the guest (netlab.nat(host_ports=...))
NAT_HOST = "10.0.2.100"
