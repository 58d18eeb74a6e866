"""Reaching a running lab with the tools people have: OpenSSH (``ssh -F``, ``scp -F``) with
the lab's ``ssh_config``, Ansible with its ``inventory.yml``, testinfra through
``vm.testinfra``, and the CLI verbs ``list``, ``ssh``, ``exec``, ``capture`` and ``graph``.

One lab of ``tests/scripts/access.toml``, brought up with ``pytest-netlab up --detach`` as a
person would, serves the module; ``tests/scripts/access.sh`` (what docs/access.md shows)
runs against it with the real programs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from pytest_netlab.infra import PinnedParamikoBackend
from pytest_netlab.labspec import Topology
from pytest_netlab.ssh import SessionKey

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
BIN = Path(sys.executable).parent  # netlab and ansible of this environment
THREE_MACHINES = ROOT / "example_tests" / "topologies" / "three_machines.toml"


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1"}


def _netlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_netlab.cli", *args], capture_output=True, text=True,
        timeout=timeout, check=False, env=_env(), stdin=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class UpLab:
    name: str
    workdir: Path


@pytest.fixture(scope="module")
def up_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpLab]:
    workdir = tmp_path_factory.mktemp("access") / "lab"
    up = _netlab("up", str(SCRIPTS / "access.toml"), "--detach", "--accel", "tcg", "--workdir", str(workdir))
    found = re.search(r"^lab (netlab-\d+-\d+) is up", up.stdout, re.M)
    assert up.returncode == 0 and found, up.stdout + up.stderr
    try:
        yield UpLab(found.group(1), workdir)
    finally:
        down = _netlab("down", found.group(1))
        assert down.returncode == 0, down.stderr


def test_a_person_reaches_the_lab_with_ssh_scp_ansible_and_the_cli(up_lab, tmp_path):
    run = subprocess.run(
        ["sh", str(SCRIPTS / "access.sh")], capture_output=True, text=True, timeout=300, check=False,
        env={**_env(), "LAB": up_lab.name, "LABDIR": str(up_lab.workdir), "OUT": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert re.search(r"^eth0\s+UP\s+10\.41\.0\.2/24", out, re.M)  # ssh -F ... h1
    assert "from the host\n" in out  # scp -F to r1, read back with ssh -F
    assert re.search(r"^h1 \| CHANGED \| rc=0 >>\nh1$", out, re.M)  # ansible all
    assert re.search(r"^r1 \| CHANGED \| rc=0 >>\neth0\s+UP\s+10\.41\.0\.1/24", out, re.M)  # routers
    assert not re.search(r"^h1 \| CHANGED .*\neth0", out, re.M)  # h1 is not in routers
    assert re.search(rf"^{up_lab.name}\s+detached\s+\S+ pid \d+: .*\s{up_lab.workdir}$", out, re.M)
    assert "1 packets transmitted, 1 received" in out  # pytest-netlab exec ... ping
    assert "\nr1\n" in out  # pytest-netlab ssh LAB r1 hostname
    replies = re.findall(r"IP 10\.41\.0\.1 > 10\.41\.0\.2: ICMP echo reply", out)
    assert len(replies) == 2, out  # pytest-netlab capture ... | a pcap file


def test_inventory_groups_guests_by_role(up_lab):
    inventory = (up_lab.workdir / "inventory.yml").read_text()
    listed = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(up_lab.workdir / "inventory.yml"), "--list"],
        capture_output=True, text=True, timeout=60, check=True, env=_env(),
    )
    groups = json.loads(listed.stdout)
    assert groups["routers"]["hosts"] == ["r1"] and groups["hosts"]["hosts"] == ["h1"], inventory
    h1 = groups["_meta"]["hostvars"]["h1"]
    assert h1["ansible_host"] == "127.0.0.1" and h1["ansible_user"] == "root"
    assert h1["ansible_ssh_common_args"] == f"-F {up_lab.workdir / 'ssh_config'}"


def test_ssh_refuses_a_guest_whose_host_key_is_not_the_pinned_one(up_lab, tmp_path):
    config = (up_lab.workdir / "ssh_config").read_text()
    pinned = (up_lab.workdir / "known_hosts").read_text()
    other_key = SessionKey.generate(tmp_path).blob  # any key but the guest's
    forged = re.sub(r"ssh-ed25519 \S+", f"ssh-ed25519 {other_key}", pinned)
    (tmp_path / "known_hosts").write_text(forged)
    (tmp_path / "ssh_config").write_text(
        config.replace(str(up_lab.workdir / "known_hosts"), str(tmp_path / "known_hosts"))
    )
    ssh = subprocess.run(["ssh", "-F", str(tmp_path / "ssh_config"), "h1", "true"],
                         capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert ssh.returncode == 255 and "Host key verification failed" in ssh.stderr, ssh.stderr
    backend = PinnedParamikoBackend(
        "h1", ssh_config=tmp_path / "ssh_config", known_hosts=tmp_path / "known_hosts"
    )
    with pytest.raises(paramiko.BadHostKeyException):
        backend.run("true")


def test_exec_passes_the_exit_status_through_and_names_what_is_wrong(up_lab):
    assert _netlab("exec", up_lab.name, "h1", "exit 7").returncode == 7
    ok = _netlab("exec", up_lab.name, "r1", "ls", "-d", "/etc")  # "-d" is the guest's
    assert (ok.returncode, ok.stdout) == (0, "/etc\n"), ok.stderr
    listed = json.loads(_netlab("list", "--json").stdout)
    mine = [lab for lab in listed if lab["name"] == up_lab.name]
    assert mine == [{**mine[0], "kind": "detached", "workdir": str(up_lab.workdir)}]
    unknown = _netlab("exec", up_lab.name, "h9", "true")
    assert (unknown.returncode, unknown.stderr) == (
        1, f"netlab: lab {up_lab.name} has no guest 'h9' reachable by SSH: guests are h1, r1\n"
    )
    no_lab = _netlab("exec", "netlab-0-1", "h1", "true")
    assert no_lab.returncode == 1 and no_lab.stderr.startswith("netlab: no running lab 'netlab-0-1': ")
    no_bridge = _netlab("capture", up_lab.name, "br9")
    assert (no_bridge.returncode, no_bridge.stderr) == (
        1, f"netlab: lab {up_lab.name} has no bridge 'br9': bridges are br1\n"
    )


def test_graph_prints_mermaid_and_graphviz():
    mermaid = _netlab("graph", str(THREE_MACHINES))
    assert (mermaid.returncode, mermaid.stdout) == (0, Topology.from_toml(THREE_MACHINES).mermaid())
    dot = _netlab("graph", "--format", "dot", str(THREE_MACHINES))
    assert dot.returncode == 0 and dot.stdout.startswith("graph lab {\n")
    assert '"node rt2" [shape=hexagon, label="rt2 (router)\\nforwarding"];' in dot.stdout
    assert '"node h2" -- "bridge br2" [label="eth0 10.20.20.2/24"];' in dot.stdout
    if shutil.which("dot"):  # Graphviz reads it
        svg = subprocess.run(["dot", "-Tsvg"], input=dot.stdout, capture_output=True, text=True, check=True)
        assert "<svg" in svg.stdout


def test_testinfra_checks_a_guest_over_the_pinned_ssh(netlab):
    # --8<-- [start:testinfra]
    h1 = netlab.vm("h1", nics=[netlab.bridge("br1")])
    netlab.start()
    host = h1.testinfra  # a testinfra Host: ssh_config and the pinned host key of the lab
    assert host.file("/etc/hostname").content_string == "h1\n"
    assert host.socket("tcp://0.0.0.0:22").is_listening  # busybox netstat answers
    assert host.run("ip -br link show eth0").stdout.startswith("eth0")
    assert host.sysctl("net.ipv4.ip_forward") == 0
    # --8<-- [end:testinfra]
    assert h1.testinfra is host  # one connection, kept
    assert (netlab.workdir / "ssh_config").exists() and (netlab.workdir / "inventory.yml").exists()


def test_capture_refuses_a_terminal_and_exec_a_missing_command():
    import pty

    master, slave = pty.openpty()
    try:
        to_terminal = subprocess.run(
            [sys.executable, "-m", "pytest_netlab.cli", "capture", "netlab-0-1", "br1"],
            stdout=slave, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert to_terminal.returncode == 1
    assert to_terminal.stderr.startswith("netlab: pytest-netlab capture writes pcap to its output: pipe it")
    no_command = _netlab("exec", "netlab-0-1", "h1")
    assert (no_command.returncode, no_command.stderr) == (
        1, "netlab: pytest-netlab exec needs a command to run in the guest, "
        "e.g. pytest-netlab exec LAB h1 ip -br addr\n"
    )


def test_testinfra_without_pytest_testinfra_says_how_to_install_it(monkeypatch):
    from pytest_netlab import infra
    from pytest_netlab.errors import ConfigError

    monkeypatch.setattr(infra, "Host", None)
    with pytest.raises(ConfigError, match=r"pip install 'pytest-netlab\[testinfra\]'"):
        infra.testinfra_host(object())  # type: ignore[arg-type]


def test_a_lab_of_netlab_up_in_the_foreground_is_listed_and_reached_by_name(tmp_path):
    topology = tmp_path / "one.toml"
    topology.write_text('[bridges.br1]\n[nodes.h1]\nlinks = [{ bridge = "br1" }]\n')
    up = subprocess.Popen(
        [sys.executable, "-m", "pytest_netlab.cli", "up", str(topology), "--accel", "tcg",
         "--workdir", str(tmp_path / "lab")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=_env(),
    )
    try:
        assert up.stdout is not None
        lines = []
        while not (found := re.match(r"lab (netlab-\d+-\d+) is up", lines[-1] if lines else "")):
            line = up.stdout.readline()
            assert line, "".join(lines)  # pytest-netlab up ended without bringing the lab up
            lines.append(line)
        name = found.group(1)
        listed = json.loads(_netlab("list", "--json").stdout)
        assert [(lab["kind"], lab["owner"]) for lab in listed if lab["name"] == name] == [("up", up.pid)]
        by_name = _netlab("exec", name, "h1", "hostname")
        assert (by_name.returncode, by_name.stdout) == (0, "h1\n"), by_name.stderr
    finally:
        up.terminate()  # SIGTERM tears the lab down, as Ctrl-C does
        rest, _ = up.communicate(timeout=120)
    assert up.returncode == 0 and f"lab {name} is down" in rest
    assert name not in [lab["name"] for lab in json.loads(_netlab("list", "--json").stdout)]
