"""Suites over several machines with pytest-xdist's own remote execution: an OpenSSH
server on the loopback, with its own keys and config, stands in for the second machine;
an inner pytest sends part of the example suite to it with ``--tx ssh=...`` (execnet),
and afterwards nothing of that run is left (docs/multi-machine.md)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_netlab.constants import NAMESPACE_PREFIX, NETNS_RUN_DIR
from pytest_netlab.image import cache_root

REPO = Path(__file__).resolve().parent.parent
# the worker logs in as the user running the tests (root, or the ordinary user of a rootless run)
USER = pwd.getpwuid(os.geteuid()).pw_name
SSHD = Path("/usr/sbin/sshd")
# the privilege separation directory compiled into Debian's sshd (its service makes it)
SSHD_PRIVSEP_DIR = Path("/run/sshd")

# A plugin loaded on the controller and the remote worker alike (``-p remote_probe``: the
# worker's chdir is on its sys.path): each test writes what the plugin looks like there.
_PROBE = '''
import json, os
from pathlib import Path

import pytest

@pytest.fixture(autouse=True)
def _probe(request, netlab_config, worker_id):
    facts = {
        "pid": os.getpid(), "worker_id": worker_id, "env_worker": os.environ.get("PYTEST_XDIST_WORKER"),
        "cwd": os.getcwd(), "artifacts": str(netlab_config.artifacts),
        "header": netlab_config.describe(), "cache": os.environ.get("NETLAB_CACHE_DIR"),
    }
    Path(f"probe-{worker_id}.json").write_text(json.dumps(facts))
    yield
'''


# a lab test that fails on the remote worker: its evidence stays on that machine
_FAILING = """
def test_remote_failure(netlab):
    netlab.vm("h1")
    netlab.start()
    assert False, "failed on purpose"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class LoopbackSshd:
    """``sshd -D`` on 127.0.0.1 and a free port, with host key, authorized_keys and config
    in *directory*; the system's sshd service is never touched. ``ssh_config`` is the
    client side: ``ssh -F ssh_config root@127.0.0.1`` logs in as root with its own key."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.ssh_config = directory / "ssh_config"
        self.log = directory / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._write_keys_and_configs()
        if os.geteuid() == 0:  # sshd run by an ordinary user needs none
            SSHD_PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(self.directory / "sshd_config"), "-p", str(self.port),
             "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while f"listening on 127.0.0.1 port {self.port}" not in self._log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start listening: {self._log_text()!r}")
            time.sleep(0.05)

    def _log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def _write_keys_and_configs(self) -> None:
        d = self.directory
        host_key = _keygen(d / "host_key")
        (d / "authorized_keys").write_text(_keygen(d / "client_key") + "\n")
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key}\n")
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PidFile none\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            f"AllowUsers {USER}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel INFO\n"
            "AcceptEnv NETLAB_CACHE_DIR\n"
        )
        self.ssh_config.write_text(
            f"Host 127.0.0.1\n  Port {self.port}\n  User {USER}\n  IdentityFile {d / 'client_key'}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {d / 'known_hosts'}\n"
            "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
            # ssh carries no environment: the worker's guest image cache is named for it
            f"  SetEnv NETLAB_CACHE_DIR={cache_root()}\n"
        )

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def loopback_sshd(tmp_path: Path) -> Iterator[LoopbackSshd]:
    if not SSHD.exists() or shutil.which("ssh") is None:
        pytest.skip("needs Debian's openssh-server and openssh-client (setup.sh installs them)")
    sshd = LoopbackSshd(tmp_path / "sshd")
    sshd.directory.mkdir()
    try:
        sshd.start()
        yield sshd
    finally:
        sshd.close()


def _processes_of_run(testrunuid: str) -> list[int]:
    """Processes (workers, QEMUs, helpers) that inherited this xdist run's id."""
    mark = f"PYTEST_XDIST_TESTRUNUID={testrunuid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _checkout_on_the_second_machine(directory: Path) -> Path:
    """The second machine's checkout of the project (here: links to this one's files).
    xdist copies pytest's own package into the worker's ``//chdir=`` (its rsync, which
    3.x still does for every remote spec), so it is not this working tree."""
    directory.mkdir()
    for name in ("pyproject.toml", "example_tests"):
        (directory / name).symlink_to(REPO / name)
    (directory / "remote_probe.py").write_text(_PROBE)
    (directory / "tests").mkdir()
    (directory / "tests" / "test_remote_failure.py").write_text(_FAILING)
    return directory


def _run_over_ssh(sshd: LoopbackSshd, tmp_path: Path, testrunuid: str) -> subprocess.CompletedProcess[str]:
    checkout = _checkout_on_the_second_machine(tmp_path / "checkout")
    controller = tmp_path / "controller"
    controller.mkdir()
    (controller / "remote_probe.py").write_text(_PROBE)
    # --8<-- [start:tx]
    tx = f"ssh={USER}@127.0.0.1//ssh_config={sshd.ssh_config}//python={sys.executable}//chdir={checkout}"
    # no test paths: a path the controller sees must lie under an rsync root (deprecated
    # in xdist 3.x); the worker collects its checkout's testpaths, -k selects
    command = [
        sys.executable, "-m", "pytest", "-p", "netlab", "-d", "--tx", tx,
        "--junitxml=junit-remote.xml", "--netlab-artifacts=artifacts",
        "-k", "h1_and_h2_ping_each_other_over_br1 or remote_failure",
    ]
    # --8<-- [end:tx]
    command += ["-p", "remote_probe", "-p", "no:cacheprovider", f"--testrunuid={testrunuid}", "-rA",
                "--netlab-keep-on-fail", "--netlab-keep-timeout=1"]
    return subprocess.run(command, check=False, cwd=controller, capture_output=True, text=True, timeout=900)


def test_xdist_tx_ssh_runs_the_example_suite_on_a_loopback_machine(loopback_sshd, tmp_path):
    testrunuid = uuid.uuid4().hex

    result = _run_over_ssh(loopback_sshd, tmp_path, testrunuid)

    output = result.stdout + result.stderr
    assert result.returncode == 1 and "1 failed, 1 passed" in output, output
    assert f"Accepted publickey for {USER}" in loopback_sshd.log.read_text()  # the worker came over ssh
    # the remote worker: xdist's identity, artifacts under the run's --netlab-artifacts
    # resolved in the worker's checkout (on its own machine), its own header line
    checkout = tmp_path / "checkout"
    remote = json.loads((checkout / "probe-gw0.json").read_text())
    assert remote["worker_id"] == remote["env_worker"] == "gw0"
    assert remote["cwd"] == str(checkout)
    assert remote["artifacts"] == str(checkout / "artifacts")
    assert remote["pid"] != os.getpid()
    assert remote["cache"] == str(cache_root())  # sent over ssh (SetEnv, AcceptEnv)
    assert f"netlab on gw0 ({socket.gethostname()}): {remote['header']}" in output
    assert "netlab: every worker is started over --tx (ssh=...): each shows its own line" in output
    # the failure's evidence: on the worker's machine, named with it in the report
    evidence = checkout / "artifacts" / "tests_test_remote_failure.py__test_remote_failure"
    assert (evidence / "README.txt").exists(), sorted((checkout / "artifacts").rglob("*"))
    assert f"evidence of the failure in {socket.gethostname()}:{evidence}" in output
    # --netlab-keep-on-fail: the kept lab is on the worker's machine, and said so
    assert f"netlab on gw0 ({socket.gethostname()}):\nnetlab: tests/test_remote_failure.py" in output
    # junit XML is written by the controller from the worker's reports
    suite = ET.parse(tmp_path / "controller" / "junit-remote.xml").getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "1")
    # nothing left: no process of the run, no lab namespace of the worker, no sshd, no port
    assert _processes_of_run(testrunuid) == []
    assert not list(NETNS_RUN_DIR.glob(f"{NAMESPACE_PREFIX}{remote['pid']}-*"))
    loopback_sshd.close()
    assert _port_is_free(loopback_sshd.port)


def _workflow() -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load((REPO / "docs" / "ci" / "multi-machine.yml").read_text())
    return workflow


def test_the_github_actions_matrix_gives_each_shard_its_cache_junit_and_artifacts():
    """docs/ci/multi-machine.yml: one job per shard, each with its own image cache and its
    own junit XML and artifacts, uploaded even when tests fail."""
    shards = _workflow()["jobs"]["shard"]
    assert shards["strategy"]["fail-fast"] is False
    count = len(shards["strategy"]["matrix"]["shard"])
    steps = shards["steps"]
    run = " ".join(step.get("run", "") for step in steps)
    shard = "${{ matrix.shard }}"
    for needed in (f"--splits {count}", f"--group {shard}", f"--junitxml=shard-{shard}/",
                   f"--netlab-artifacts=shard-{shard}/", "./setup.sh"):
        assert needed in run, needed
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"].startswith(shards["env"]["NETLAB_CACHE_DIR"])
    assert "hashFiles('images/**')" in cache["with"]["key"]
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "shard-${{ matrix.shard }}"


def test_the_merge_job_merges_the_shards_junit_files(pytester: pytest.Pytester):
    pytester.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass\n")
    for shard, selection in (("1", "one"), ("2", "two")):
        pytester.runpytest_inprocess(
            f"--junitxml=shard-{shard}/junit.xml", "-o", f"junit_suite_name=shard-{shard}", "-k", selection,
        ).assert_outcomes(passed=1)
    merge = _workflow()["jobs"]["merge"]
    assert merge["needs"] == "shard" and merge["if"] == "always()"
    script = next(step["run"] for step in merge["steps"] if "run" in step)

    subprocess.run(["bash", "-c", script], cwd=pytester.path, check=True)

    suites = ET.parse(pytester.path / "junit.xml").getroot().findall("testsuite")
    assert [(s.get("name"), s.get("tests")) for s in suites] == [("shard-1", "1"), ("shard-2", "1")]


def test_local_workers_print_no_header_of_their_own(pytester: pytest.Pytester):
    # workers on the controller's machine (-n, popen) are described by its header line,
    # which describes the machine
    pytester.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass\n")
    result = pytester.runpytest_subprocess("-p", "netlab", "-n", "2")
    result.assert_outcomes(passed=2)
    assert "netlab on gw" not in result.stdout.str() + result.stderr.str()
    headers = [line for line in result.outlines if line.startswith("netlab: ")]
    assert len(headers) == 1 and headers[0].startswith("netlab: accelerator "), headers
