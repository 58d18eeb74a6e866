"""The host side of the guest protocol speaks what images/init reads (pure logic: reads
images/init, boots nothing; test_image.py and the lab tests boot real guests)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from pytest_netlab import guest_protocol as protocol
from pytest_netlab.image import GuestImage

INIT = (Path(__file__).parent.parent / "images" / "init").read_text()


def _image(cmdline: str = "console=ttyS0 quiet") -> GuestImage:
    path = Path("/nonexistent")
    return GuestImage(path, path, cmdline, path, "cloud", "0" * 16, "6.1", frozenset())


def test_every_kernel_parameter_the_host_gives_is_one_init_reads():
    read = set(re.findall(r"^\s*(netlab\.\w+)=\*\)", INIT, re.MULTILINE))
    # a package image's command line: the overlay root the host gives (package_image.py)
    package = _image(f"console=ttyS0 quiet {protocol.OVERLAY_ROOT}")
    line = protocol.guest_cmdline(package, "h1", ["52:54:00:00:01:00"], ["e1000"], aslr=True, cpus=1)
    line += " " + " ".join(protocol.key_params("ssh-ed25519", "AAAA"))
    given = {p.split("=", 1)[0] for p in line.split() if p.startswith("netlab.")}
    assert given == {"netlab.name", "netlab.nics", "netlab.aslr", "netlab.mgmt", "netlab.mgmt_addr",
                     "netlab.modules", "netlab.keytype", "netlab.key", "netlab.overlay"}
    assert given | {"netlab.template"} <= read
    assert protocol.DISK_ROOT.split("=")[0] + "=*)" in INIT
    assert f"netlab.mgmt_addr={protocol.MGMT_GUEST_ADDR}" in line.split()
    assert " acpi=noirq " in line and "netlab.modules=e1000" in line.split()


def test_the_configuration_line_has_the_keys_init_takes():
    taken = set(re.findall(r"^\t\t(\w+)=\*\)", INIT, re.MULTILINE))
    key = protocol.GuestHostKey.generate()
    line = protocol.config_line("h1", ["52:54:00:00:01:00"], "ssh-ed25519", "AAAA", key, aslr=True)
    assert line.endswith("\n") and line.count("\n") == 1
    mark, *fields = line.split()
    assert mark == protocol.CONFIG_MARK and f"case \"$line\" in {mark}\\ *)" in INIT
    values = dict(f.split("=", 1) for f in fields)
    assert set(values) == taken
    assert values["hostpub"] == key.public_blob and values["aslr"] == "2"
    assert protocol.HOST_KEY_LINE.match(key.public_line)
    assert base64.b64decode(values["hostkey"]) == key.dropbear_file
    # the seed: what init requires (32+ characters) and fresh for every copy
    assert re.fullmatch(r"[0-9a-f]{64}", values["seed"]) and "[ ${#seed} -ge 32 ]" in INIT
    again = protocol.config_line("h1", ["52:54:00:00:01:00"], "ssh-ed25519", "AAAA", key)
    assert f"seed={values['seed']}" not in again
    # init reseeds the CRNG from it before SSH starts, and gives up if it cannot
    personalise = INIT[INIT.index("reseed_crng\n"):INIT.index("stage \"personalised\"")]
    assert personalise.index("reseed_crng") < personalise.index("start_ssh")
    assert '/usr/lib/netlab/reseed || refuse "' in INIT


def test_the_console_marks_are_the_ones_init_prints():
    for mark in (protocol.READY_MARK, protocol.TEMPLATE_MARK):
        assert f'say "{mark}"' in INIT
    for mark in (protocol.HOSTKEY_MARK, protocol.ERROR_MARK):
        assert f'say "{mark}$' in INIT
    assert f"{protocol.MGMT_IFNAME}" in INIT and protocol.guest_ifname(3) == "eth3"


def test_interface_names_and_indexes_round_trip():
    for index in (0, 1, 12):
        assert protocol.guest_ifindex(protocol.guest_ifname(index)) == index
    for name in ("eth", "mgmt0", "eth1a", "veth0", "vport11"):
        assert protocol.guest_ifindex(name) is None


def test_the_package_spells_guest_interface_names_in_one_place():
    package = Path(protocol.__file__).parent
    others = [p for p in package.glob("*.py") if p.name != "guest_protocol.py"]
    spelled = [p.name for p in others if "eth{" in p.read_text()]
    assert spelled == [], "use guest_protocol.guest_ifname()"


def test_a_console_command_is_framed_so_its_echo_and_prompt_are_skipped():
    run = protocol.ConsoleCommand("cat /etc/x; exit 3", token="t0")
    # no typed line, echoed, is a mark line: printf makes them
    typed = (run.typed + run.shell_setup).splitlines()
    assert run.shell_ready not in typed and not run.finished(typed)
    assert not any(line.endswith("NETLAB-BEGIN-t0") for line in typed)
    assert run.shell_setup.startswith("stty -echo; PS1=''; PS2=''; ") and run.shell_setup.endswith("\n")
    echoed = run.typed.splitlines()  # a console that still echoes shows the typed lines first
    lines = [*echoed, "# NETLAB-BEGIN-t0", "line 1", "line 2", ""]
    assert not run.finished(lines)
    lines.append("NETLAB-END-t0 3")
    assert run.finished(lines) and run.result(lines) == (3, "line 1\nline 2\n")  # as printed
    assert run.result(["NETLAB-BEGIN-t0", "", "NETLAB-END-t0 0"]) == (0, "")
    assert protocol.ConsoleCommand("true").token != protocol.ConsoleCommand("true").token
