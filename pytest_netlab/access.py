"""How a person reaches a running lab: the text ``netlab up`` prints and a kept test's
lab shows (a shell in each guest, the lab namespace, the console logs).

The SSH command lines pin each guest's host key through a ``known_hosts`` file in the
lab's directory, written here, so the guest is checked the way the plugin checks it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .constants import NETNS_RUN_DIR
from .guest import VM
from .lab import Lab


def known_hosts_path(lab: Lab) -> Path:
    return lab.workdir / "known_hosts"


def write_known_hosts(lab: Lab) -> Path | None:
    """Write the host key each guest printed at boot as a ``known_hosts`` file; ``None``
    when no guest has one (no guest with network is started)."""
    lines = []
    for vm in lab.vms.values():
        if vm.spec.network and vm.machine is not None and vm.machine.host_key and vm.machine.is_running():
            lines.append(f"[127.0.0.1]:{vm.host_port(22)} {vm.machine.host_key}")
    if not lines:
        return None
    path = known_hosts_path(lab)
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_argv(vm: VM, known_hosts: Path | None = None) -> list[str]:
    """The ``ssh`` command line that opens a root shell in *vm* through its forwarded port.

    Raises:
        LabError: the guest is not started or has no network.
    """
    if known_hosts is not None:
        host_key = ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        host_key = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return [
        "ssh", "-i", str(vm.lab.key.private_path), "-p", str(vm.host_port(22)),
        *host_key, "-o", "IdentitiesOnly=yes", "root@127.0.0.1",
    ]


def describe(lab: Lab, state: str = "") -> str:
    """Several lines: the lab's name (and *state*, e.g. "up") and directory, how to enter
    its namespace, and per guest the ``ssh`` command and console log. Writes the lab's
    ``known_hosts`` file."""
    known_hosts = write_known_hosts(lab)
    namespace = NETNS_RUN_DIR / lab.name
    lines = [
        f"lab {lab.name}{f' is {state}' if state else ''}; files in {lab.workdir}",
        f"  lab namespace: nsenter --net={namespace} bash   (or: ip netns exec {lab.name} bash)",
    ]
    for vm in lab.vms.values():
        if vm.machine is None:
            lines.append(f"  {vm.name}: not started")
            continue
        if not vm.machine.is_running():
            lines.append(f"  {vm.name}: QEMU is not running (exit status {vm.machine.exitcode()})")
        elif vm.spec.network:
            lines.append(f"  {vm.name}: {shlex.join(ssh_argv(vm, known_hosts))}")
        else:
            lines.append(f"  {vm.name}: no network, no SSH (serial console only)")
        if vm.started and (addresses := vm.addresses):
            # chosen by the address plan (bridges with a subnet) or given with address=
            lines.append(
                f"  {vm.name} addresses: "
                + ", ".join(f"{nic} {' '.join(a)}" for nic, a in addresses.items())
            )
        lines.append(f"  {vm.name} console log: {vm.console_log}")
    return "\n".join(lines) + "\n"

