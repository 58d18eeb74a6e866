"""How a person reaches a running lab: the text ``pytest-netlab up`` prints and a kept test's
lab shows (a shell in each guest, the lab namespace, the console logs), and the files in
the lab's directory that the usual tools read: ``ssh_config`` (OpenSSH: ``ssh -F``,
``scp -F``, ``rsync -e 'ssh -F ...'`` by guest name) and ``inventory.yml`` (Ansible).

Every way in pins each guest's host key through a ``known_hosts`` file in the lab's
directory, written here, so the guest is checked the way the plugin checks it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from .guest import VM, Router
from .lab import Lab
from .labcontext import LabContext

SSH_CONFIG = "ssh_config"
INVENTORY = "inventory.yml"


def known_hosts_path(lab: Lab | LabContext) -> Path:
    return lab.workdir / "known_hosts"


def write_known_hosts(lab: Lab | LabContext) -> Path | None:
    """Write the host key each guest printed at boot as a ``known_hosts`` file; ``None``
    when no guest has one (no guest with network is started)."""
    lines = [
        f"[127.0.0.1]:{vm.host_port(22)} {vm.machine.marks.host_key}" for vm in _reachable(lab) if vm.machine
    ]
    if not lines:
        return None
    path = known_hosts_path(lab)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class AccessFiles:
    """The files of a running lab that OpenSSH and Ansible read."""

    ssh_config: Path
    inventory: Path
    known_hosts: Path


def _reachable(lab: Lab | LabContext) -> list[VM]:
    """The guests SSH reaches now: started with network, their QEMU running."""
    return [
        vm for vm in lab.vms.values()
        if vm.spec.network and vm.machine is not None and vm.machine.marks.host_key
        and vm.machine.is_running()
    ]


def _config_value(value: str | Path) -> str:
    # ssh_config takes a value with spaces in double quotes
    text = str(value)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def ssh_config_text(lab: Lab | LabContext, known_hosts: Path) -> str:
    """An OpenSSH client configuration with a ``Host`` block per reachable guest (its
    forwarded port on 127.0.0.1) and, for every host, root, the session's key and the
    lab's ``known_hosts`` with strict checking (no prompt, no other key accepted)."""
    lines = [
        f"# OpenSSH client configuration of lab {lab.name}, written by pytest-netlab:",
        f"#   ssh -F {_config_value(lab.workdir / SSH_CONFIG)} GUEST",
    ]
    for vm in _reachable(lab):
        lines += [f"Host {vm.name}", "    HostName 127.0.0.1", f"    Port {vm.host_port(22)}"]
    lines += [
        "Host *",
        "    User root",
        f"    IdentityFile {_config_value(lab.key.private_path)}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {_config_value(known_hosts)}",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
    ]
    return "\n".join(lines) + "\n"


def inventory_text(lab: Lab | LabContext, ssh_config: Path) -> str:
    """An Ansible inventory (YAML) of the reachable guests, in groups ``routers`` and
    ``hosts``, each with its address and port, over SSH with *ssh_config* (the key and
    the pinned host keys)."""

    def quoted(value: str | Path) -> str:
        return json.dumps(str(value))  # a JSON string is a YAML string

    lines = [
        f"# Ansible inventory of lab {lab.name}, written by pytest-netlab:",
        f"#   ansible -i {shlex.quote(str(lab.workdir / INVENTORY))} all -m raw -a 'ip -br addr'",
        "all:",
        "  vars:",
        "    ansible_connection: ssh",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {quoted(lab.key.private_path)}",
        f"    ansible_ssh_common_args: {quoted('-F ' + shlex.quote(str(ssh_config)))}",
        "  children:",
    ]
    guests = _reachable(lab)
    for group, members in (
        ("routers", [vm for vm in guests if isinstance(vm, Router)]),
        ("hosts", [vm for vm in guests if not isinstance(vm, Router)]),
    ):
        lines += [f"    {group}:", "      hosts:" + ("" if members else " {}")]
        for vm in members:
            lines += [
                f"        {quoted(vm.name)}:",
                "          ansible_host: 127.0.0.1",
                f"          ansible_port: {vm.host_port(22)}",
            ]
    return "\n".join(lines) + "\n"


def write_access_files(lab: Lab | LabContext) -> AccessFiles:
    """Write (again: ports are the guests' current ones) the lab's ``known_hosts``,
    ``ssh_config`` and ``inventory.yml`` into its directory; return their paths."""
    lab.workdir.mkdir(parents=True, exist_ok=True)
    known_hosts = write_known_hosts(lab) or known_hosts_path(lab)
    if not known_hosts.exists():
        known_hosts.write_text("")  # no guest with network: nothing to pin, nothing to reach
    ssh_config = lab.workdir / SSH_CONFIG
    ssh_config.write_text(ssh_config_text(lab, known_hosts))
    inventory = lab.workdir / INVENTORY
    inventory.write_text(inventory_text(lab, ssh_config))
    return AccessFiles(ssh_config, inventory, known_hosts)


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
        "ssh", "-i", str(vm.context.key.private_path), "-p", str(vm.host_port(22)),
        *host_key, "-o", "IdentitiesOnly=yes", "root@127.0.0.1",
    ]


def describe(lab: Lab | LabContext, state: str = "") -> str:
    """Several lines: the lab's name (and *state*, e.g. "up") and directory, how to enter
    its namespace, and per guest the ``ssh`` command and console log. Writes the lab's
    ``known_hosts``, ``ssh_config`` and ``inventory.yml`` files."""
    files = write_access_files(lab)
    known_hosts = files.known_hosts if _reachable(lab) else None
    namespace = lab.namespace.path
    enter = shlex.join(namespace.enter(["bash"]))
    also = f"   (or: ip netns exec {lab.name} bash)" if namespace.holder is None else ""
    config = shlex.quote(str(files.ssh_config))
    lines = [
        f"lab {lab.name}{f' is {state}' if state else ''}; files in {lab.workdir}",
        f"  lab namespace: {enter}{also}",
        f"  by guest name: ssh -F {config} GUEST   (scp -F, rsync -e 'ssh -F {config}' too)",
        f"  ansible: ansible -i {shlex.quote(str(files.inventory))} all -m raw -a 'ip -br addr'",
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

