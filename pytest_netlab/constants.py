"""Names and choices several modules share, in a module without heavy imports: the pytest
plugin is loaded in every run of a project that installs pytest-netlab, labs or not."""

from __future__ import annotations

from pathlib import Path

#: --netlab-accel / netlab_accel
ACCEL_CHOICES = ("auto", "kvm", "tcg")
#: --netlab-boot / netlab_boot: resumed from a saved state, or a full kernel boot
BOOT_MODES = ("snapshot", "cold")
#: --netlab-pcap
PCAP_MODES = ("off", "on-failure", "always")
#: a lab's network namespace is netlab-<owner pid>-<lab number>
NAMESPACE_PREFIX = "netlab-"
#: where `ip netns` (and pyroute2) keep named network namespaces
NETNS_RUN_DIR = Path("/run/netns")
#: the address that a NAT NIC's host ports have in the guest (netlab.nat(host_ports=...))
NAT_HOST = "10.0.2.100"
