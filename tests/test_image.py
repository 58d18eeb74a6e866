"""The guest image: recipe hashing and caching, and real boots under TCG.

The boot tests build the image (or reuse the cached one), start QEMU directly (no lab,
no namespaces: a user-mode management NIC with a forwarded port on 127.0.0.1) and check
the guest init's console contract and the tools over SSH.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from qemu.qmp.legacy import QEMUMonitorProtocol

from pytest_netlab import image
from pytest_netlab.errors import ImageError

MGMT_MAC = "52:54:00:ff:00:01"
MGMT_ADDR = "100.127.255.10/24"
BOOT_TIMEOUT = 120.0

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"
)


# -- recipe, cache ---------------------------------------------------------------------


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path / "c"))
    assert image.cache_root() == tmp_path / "c"
    monkeypatch.delenv("NETLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert image.cache_root() == tmp_path / "x" / "pytest-netlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert image.cache_root() == Path.home() / ".cache" / "pytest-netlab"


def test_recipe_is_complete() -> None:
    recipe = image.recipe_dir()
    for name in ("build.sh", "init", "udhcpc.script", "packages.txt", "modules.txt", "cmdline"):
        assert (recipe / name).is_file(), name
    packages = (recipe / "packages.txt").read_text().split()
    for needed in ("busybox-static", "dropbear-bin", "iproute2", "tcpdump", "dnsmasq-base", "cpio"):
        assert needed in packages


def test_recipe_hash_changes_with_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = tmp_path / "images"
    shutil.copytree(image.recipe_dir(), copy)
    monkeypatch.setattr(image, "recipe_dir", lambda: copy)
    first = image.recipe_hash()
    assert first == image.recipe_hash()
    assert image.recipe_hash("generic") != first
    (copy / "init").write_text((copy / "init").read_text() + "\n# changed\n")
    assert image.recipe_hash() != first
    with pytest.raises(ImageError):
        image.recipe_hash("nonesuch")


def test_variant_follows_the_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(image.VARIANT_ENV, raising=False)
    assert image.variant_for() == "cloud"
    assert image.variant_for(["bridge", "virtio_net"]) == "cloud"
    assert image.variant_for(["e1000"]) == "generic"
    assert image.variant_for(["8139cp"]) == "generic"
    monkeypatch.setenv(image.VARIANT_ENV, "generic")
    assert image.variant_for() == "generic"
    monkeypatch.setenv(image.VARIANT_ENV, "bogus")
    with pytest.raises(ImageError):
        image.variant_for()


def test_a_failed_build_names_the_command_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    copy = tmp_path / "images"
    shutil.copytree(image.recipe_dir(), copy)
    (copy / "build.sh").write_text(
        "#!/bin/bash\necho 'build.sh: copying'\n"
        "echo 'build.sh: error: package foo is not installed: apt-get install foo' >&2\nexit 1\n"
    )
    monkeypatch.setattr(image, "recipe_dir", lambda: copy)
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(image.VARIANT_ENV, raising=False)
    with pytest.raises(ImageError) as caught:
        image.default_image()
    message = str(caught.value)
    assert "build.sh" in message and "status 1" in message and "apt-get install foo" in message
    assert "\n" not in message
    leftovers = [p for p in (tmp_path / "cache" / "images").iterdir() if p.is_dir()]
    assert leftovers == []


def _run_recipe(tmp_path: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(image.recipe_dir() / "build.sh"), str(tmp_path / "out")],
        env={"PATH": path, "HOME": str(tmp_path), **env}, capture_output=True, text=True, check=False,
    )


def test_the_recipe_looks_for_its_tools_in_sbin_too(tmp_path: Path) -> None:
    # stops right after the tool checks, at the bad compressor (before any work)
    result = _run_recipe(tmp_path, "/usr/bin:/bin", NETLAB_INITRD_COMPRESS="bogus")
    assert result.returncode == 1
    assert "not found" not in result.stderr
    assert "NETLAB_INITRD_COMPRESS=bogus: use gzip, lz4, zstd or none" in result.stderr


def test_the_recipe_says_where_it_looked_for_a_missing_tool(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # only what the recipe runs before its tool checks
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    result = _run_recipe(tmp_path, str(bin_dir))
    assert result.returncode == 1
    assert (
        f"build.sh: error: 'dpkg-deb' not found in PATH={bin_dir}:/usr/local/sbin:/usr/sbin:/sbin: "
        "apt-get install dpkg"
    ) in result.stderr


FAKE_BUILD = """#!/bin/bash
# stands in for the recipe: it goes on once the other caller says it waits for the lock
# (at most 20 s: without a lock both build, and the count shows it)
set -e
echo started >> "$COUNT_FILE"
for _ in $(seq 200); do [ -e "$WAITING_FILE" ] && break; sleep 0.1; done
if [ -e "$WAITING_FILE" ]; then echo overlapped >> "$COUNT_FILE"; else echo alone >> "$COUNT_FILE"; fi
mkdir -p "$1"
cd "$1"
touch vmlinux vmlinuz initrd.img
echo 'console=ttyS0' > cmdline
echo 6.1.0-test > kernel-version
echo 'modules=virtio_net bridge' > manifest.txt
echo 'build.sh: done'
"""


def _default_image_in_subprocess(cache: str, recipe: str, count_file: str) -> str:
    os.environ["NETLAB_CACHE_DIR"] = cache
    os.environ["COUNT_FILE"] = count_file
    waiting = Path(count_file).with_name("waiting")
    os.environ["WAITING_FILE"] = str(waiting)
    os.environ.pop(image.VARIANT_ENV, None)
    image.recipe_dir = lambda: Path(recipe)

    def progress(message: str) -> None:
        if message.startswith("waiting for another process"):
            waiting.write_text(f"{os.getpid()}: {message}\n")

    return str(image.default_image(progress=progress).root)


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    recipe = tmp_path / "images"
    shutil.copytree(image.recipe_dir(), recipe)
    (recipe / "build.sh").write_text(FAKE_BUILD)
    count_file = tmp_path / "count"
    args = (str(tmp_path / "cache"), str(recipe), str(count_file))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        roots = pool.starmap(_default_image_in_subprocess, [args, args])
    assert roots[0] == roots[1]
    # one build, during which the other caller was waiting for the lock
    assert count_file.read_text().split() == ["started", "overlapped"]
    built = Path(roots[0])
    assert built.parent == tmp_path / "cache" / "images" and (built / "netlab-image.json").is_file()
    assert [p.name for p in built.parent.iterdir() if p.is_dir()] == [built.name]  # no temp dirs left


def test_clean_images_removes_cached_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path))
    old = tmp_path / "images" / "cloud-0123456789abcdef"
    old.mkdir(parents=True)
    (old / "initrd.img").write_bytes(b"x")
    (tmp_path / "debs").mkdir()
    removed = image.clean_images()
    assert old in removed and tmp_path / "debs" in removed
    assert not old.exists()


def test_saved_states_unused_for_a_week_are_pruned(tmp_path: Path) -> None:
    from pytest_netlab.templates import TemplateStore

    store = TemplateStore(tmp_path, "7.2.0")
    stale, recent = tmp_path / "stale.state", tmp_path / "recent.state"
    for path in (stale, recent):
        path.write_bytes(b"saved")
    eight_days_ago = time.time() - 8 * 86400
    os.utime(stale, (eight_days_ago, eight_days_ago))
    os.utime(recent, (time.time() - 6 * 86400,) * 2)

    assert store.prune() == [stale]
    assert not stale.exists() and recent.exists()


# -- booting ---------------------------------------------------------------------------


@dataclass
class Guest:
    process: subprocess.Popen[bytes]
    console: Path
    port: int
    hostkey: tuple[str, str]
    ready_after: float
    client: paramiko.SSHClient

    def run(self, command: str, timeout: float = 30.0) -> str:
        _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        status = stdout.channel.recv_exit_status()
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        assert status == 0, f"{command!r} exited {status}\n{out}\n{err}"
        return out


def _keypair() -> tuple[paramiko.Ed25519Key, str, str]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    keytype, blob = public.split()[:2]
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), keytype, blob


def _console(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _forwarded_port(qmp_path: Path) -> int:
    qmp = QEMUMonitorProtocol(str(qmp_path))
    qmp.connect()
    try:
        usernet = str(qmp.cmd("human-monitor-command", **{"command-line": "info usernet"}))
    finally:
        qmp.close()
    found = re.search(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)", usernet)
    assert found, usernet
    return int(found.group(1))


@contextlib.contextmanager
def booted(
    img: image.GuestImage,
    workdir: Path,
    *,
    lab_devices: list[tuple[str, str]],
    modules: tuple[str, ...] = (),
    smp: int = 1,
) -> Iterator[Guest]:
    """Boot ``img`` with the lab NICs ``lab_devices`` ((QEMU model, MAC), as eth0, eth1...)
    on isolated user-mode netdevs, plus the management NIC; yield once SSH works."""
    pkey, keytype, blob = _keypair()
    console = workdir / "console.log"
    qmp_path = workdir / "qmp.sock"
    params = [
        img.cmdline,
        "netlab.name=imgtest",
        f"netlab.nics={','.join(mac for _, mac in lab_devices)}",
        f"netlab.mgmt={MGMT_MAC}",
        f"netlab.mgmt_addr={MGMT_ADDR}",
        f"netlab.keytype={keytype}",
        f"netlab.key={blob}",
    ]
    if modules:
        params.append(f"netlab.modules={','.join(modules)}")
    accel = ["-accel", "tcg,thread=multi", "-smp", str(smp)] if smp > 1 else ["-accel", "tcg"]
    command = [
        "qemu-system-x86_64",
        *accel,
        "-cpu",
        "max",
        "-m",
        "128",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(img.kernel),
        "-initrd",
        str(img.initrd),
        "-append",
        " ".join(params),
        "-chardev",
        f"file,id=con,path={console}",
        "-serial",
        "chardev:con",
        "-qmp",
        f"unix:{qmp_path},server=on,wait=off",
    ]
    for i, (model, mac) in enumerate(lab_devices):
        # a user-mode netdev with restrict=on reaches nothing; the NIC stays down anyway
        command += [
            "-netdev",
            f"user,id=lab{i},restrict=on",
            "-device",
            f"{model},netdev=lab{i},mac={mac},romfile=",
        ]
    guest_ip = MGMT_ADDR.split("/", maxsplit=1)[0]
    command += [
        "-netdev",
        f"user,id=mgmt,net=100.127.255.0/24,restrict=on,hostfwd=tcp:127.0.0.1:0-{guest_ip}:22",
        "-device",
        f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC},romfile=",
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    client = paramiko.SSHClient()
    try:
        while "NETLAB-READY" not in (text := _console(console)):
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                pytest.fail(f"QEMU exited with {process.returncode}: {output}\n{text}")
            if time.monotonic() - started > BOOT_TIMEOUT:
                pytest.fail(f"no NETLAB-READY within {BOOT_TIMEOUT} s; console:\n{text}")
            time.sleep(0.02)
        ready_after = time.monotonic() - started
        lines = text.splitlines()
        hostkey_lines = [ln for ln in lines if ln.startswith("NETLAB-HOSTKEY ")]
        assert len(hostkey_lines) == 1, text
        ready_index = next(i for i, ln in enumerate(lines) if ln.strip() == "NETLAB-READY")
        assert lines.index(hostkey_lines[0]) < ready_index, text
        assert "NETLAB-ERROR" not in text, text
        _, hk_type, hk_blob = hostkey_lines[0].split()[:3]
        assert hk_type == "ssh-ed25519" and hk_blob.startswith("AAAA"), hostkey_lines[0]

        port = _forwarded_port(qmp_path)
        # paramiko checks the server's key against the one the console printed
        client.get_host_keys().add(
            f"[127.0.0.1]:{port}", hk_type, paramiko.Ed25519Key(data=base64.b64decode(hk_blob))
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            "127.0.0.1",
            port,
            username="root",
            pkey=pkey,
            allow_agent=False,
            look_for_keys=False,
            timeout=30,
            banner_timeout=30,
            auth_timeout=30,
        )
        yield Guest(process, console, port, (hk_type, hk_blob), ready_after, client)
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="netlab-imgtest-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_image_has_the_crng_reseed_helper_executable_and_small() -> None:
    manifest = image._manifest(image.default_image().root)
    mode, size = manifest["reseed"].split()
    assert mode == "-rwxr-xr-x" and int(size) < 64 * 1024  # no libc in it


@needs_qemu
def test_guest_boots_and_serves_ssh_with_the_tools(workdir: Path) -> None:
    img = image.default_image()
    assert img.kernel.is_file() and img.initrd.is_file()
    assert "console=ttyS0" in img.cmdline and "netlab." not in img.cmdline
    lab_mac = "52:54:00:aa:00:01"
    with booted(img, workdir, lab_devices=[("virtio-net-pci", lab_mac)]) as guest:
        assert guest.run("hostname").strip() == "imgtest"
        links = {link["ifname"]: link for link in json.loads(guest.run("ip -j link"))}
        assert links["eth0"]["address"] == lab_mac
        assert "UP" not in links["eth0"]["flags"]  # lab NICs are left down
        assert "UP" in links["mgmt0"]["flags"] and "UP" in links["lo"]["flags"]
        addrs = json.loads(guest.run("ip -j addr show dev mgmt0"))
        assert any(
            f"{a['local']}/{a['prefixlen']}" == MGMT_ADDR
            for a in addrs[0]["addr_info"]
            if a["family"] == "inet"
        )
        routes = json.loads(guest.run("ip -j route"))
        assert not any(r["dst"] == "default" for r in routes)  # no default route via mgmt
        tools = (
            "ping -c1 -W1 127.0.0.1",
            "ping -c1 -W1 -M do -I lo 127.0.0.1",
            "ethtool --version",
            "tcpdump --version",
            "dnsmasq --version",
            "brctl --help",
            "ifconfig",
            "route -n",
            "which ifup",
            "which httpd nc udhcpc sysctl",
            "bridge -V",
            "tc -V",
            "sysctl net.ipv4.ip_forward",
        )
        guest.run(" && ".join(tools))  # one round trip; a failure shows which one in stderr
        # kernel modules load on demand (request_module -> /sbin/modprobe)
        guest.run("ip link add br0 type bridge && ip tuntap add mode tun tun0")
        guest.run(
            "ip link add link eth0 name eth0.10 type vlan id 10 && ip link add v0 type veth peer name v1"
        )
        guest.run("ip link add d0 type dummy && tc qdisc add dev d0 root netem delay 1ms")
        guest.run("brctl show br0")
        # the CRNG reseed helper (images/reseed.c) works on this kernel for root, and only
        # root: status 1 is EPERM
        guest.run("/usr/lib/netlab/reseed")
        denied = guest.run("su -s /bin/sh nobody -c '/usr/lib/netlab/reseed; echo status=$?'")
        assert denied.split() == ["status=1"]
        assert guest.run("ethtool -i eth0").splitlines()[0] == "driver: virtio_net"
        # the shell of exec sessions runs PATH's programs (iproute2's ip, not busybox's)
        assert "iproute2" in guest.run("ip -V")
        assert "/usr/sbin" in guest.run("echo $PATH")
        # ifupdown: static and DHCP (dnsmasq in a network namespace of the guest)
        guest.run(
            "printf 'auto lo\\niface lo inet loopback\\niface eth0 inet static\\n"
            "    address 198.51.100.7\\n    netmask 255.255.255.0\\n"
            "iface vc inet dhcp\\n    udhcpc_opts -T 1 -t 5\\n'"
            " > /etc/network/interfaces && ifup eth0"
        )
        assert "198.51.100.7/24" in guest.run("ip -br addr show eth0")
        guest.run(
            "ip netns add srv && ip link add vc type veth peer name vs && ip link set vs netns srv"
            " && ip -n srv addr add 192.0.2.1/24 dev vs && ip -n srv link set vs up"
            " && ip netns exec srv dnsmasq --port=0 --interface=vs --bind-interfaces"
            " --dhcp-range=192.0.2.50,192.0.2.60,1h --dhcp-option=option:router,192.0.2.1"
            " --no-ping --dhcp-leasefile=/tmp/leases --pid-file=/run/dnsmasq-srv.pid"
        )
        guest.run("ifup vc", timeout=60)
        assert "192.0.2." in guest.run("ip -br -4 addr show vc")
        assert "default via 192.0.2.1" in guest.run("ip route")
        guest.run("ifdown vc && ifdown eth0 && kill $(cat /run/dnsmasq-srv.pid)")
        # poweroff -f ends QEMU
        guest.client.exec_command("poweroff -f")
        guest.process.wait(timeout=30)


@needs_qemu
def test_e1000_and_rtl8139_guest_gets_its_drivers(workdir: Path) -> None:
    modules = ("e1000", "8139cp")
    img = image.default_image(modules=modules)
    assert img.has_modules(modules)
    assert image.default_image().for_modules(modules) == img
    devices = [("e1000", "52:54:00:aa:00:11"), ("rtl8139", "52:54:00:aa:00:12")]
    with booted(img, workdir, lab_devices=devices, modules=modules) as guest:
        for i, (_, mac) in enumerate(devices):
            assert guest.run(f"cat /sys/class/net/eth{i}/address").strip() == mac
        drivers = guest.run("for i in 0 1; do basename $(readlink /sys/class/net/eth$i/device/driver); done")
        assert drivers.split() == ["e1000", "8139cp"]
        guest.run("ip link set eth0 up && ethtool -i eth0 | grep -qx 'driver: e1000'")


def test_guest_images_are_pruned_by_last_use_not_by_build_time(tmp_path: Path, monkeypatch) -> None:
    from pytest_netlab import image

    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path))
    images = tmp_path / "images"
    month_ago = time.time() - 30 * 86400
    in_use, unused, keep = (images / f"cloud-{name}" for name in ("inuse", "unused", "current"))
    for path in (in_use, unused, keep):
        path.mkdir(parents=True)
        os.utime(path, (month_ago, month_ago))  # all built a month ago
    image.mark_used(in_use)  # a long-lived checkout's image, used a month ago...
    os.utime(in_use / image.USED_MARKER, (month_ago, month_ago))
    image.mark_used(in_use)  # ...and now again: the existing marker is now's
    image.mark_used(unused)
    os.utime(unused / image.USED_MARKER, (month_ago, month_ago))  # last used a month ago
    image._prune("cloud", keep=keep)
    assert sorted(p.name for p in images.iterdir() if p.is_dir()) == ["cloud-current", "cloud-inuse"]
