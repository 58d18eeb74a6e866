"""Package images (pytest_netlab.package_image): names, apt's verdict on bad sets, the
cache (one build, pruning, leftovers), the saved-state identity, the option and topology
keys, and vm.daemon(). The example guests run in example_tests/test_package_image.py."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pytest_netlab import package_image as pi
from pytest_netlab.errors import ConfigError, ImageError
from pytest_netlab.guest import _check_daemon_name
from pytest_netlab.guest_protocol import OVERLAY_ROOT
from pytest_netlab.image import GuestImage
from pytest_netlab.labspec import Topology
from pytest_netlab.templates import Layout, NicLayout, TemplateStore

pytest_plugins = ["pytester"]


def test_package_names_are_sorted_unique_and_checked():
    assert pi.parse_packages("iperf3, frr iperf3") == ("frr", "iperf3")
    assert pi.parse_packages(["nftables", "bird2"]) == ("bird2", "nftables")
    for bad in (["Frr"], ["frr;rm"], ["-o"], [""], [3]):
        with pytest.raises(ConfigError, match="is not accepted"):
            pi.parse_packages(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no packages"):
        pi.parse_packages(" , ")


def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path / "cache"))
    images = tmp_path / "cache" / "images"
    images.mkdir(parents=True)
    return images


def test_an_unknown_package_is_a_config_error_with_apts_message_and_nothing_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    images = _cache(tmp_path, monkeypatch)
    base = dataclasses.replace(_image(tmp_path), root=tmp_path / "base")
    with pytest.raises(ConfigError, match=r"no-such-package-xyz.*Unable to locate package no-such-pa"):
        pi.package_image(["frr", "no-such-package-xyz"], base=base)
    assert list(images.iterdir()) == []


def test_a_set_apt_cannot_resolve_is_a_config_error_naming_the_conflict():
    with pytest.raises(ConfigError, match=r"apt cannot install them: .*Conflicts"):
        pi.resolve(["postfix", "exim4-daemon-light"])


def test_resolution_gives_the_versions_of_the_packages_and_their_dependencies():
    versions = pi.resolve(["iperf3"])
    names = {v.split("=")[0] for v in versions}
    assert {"iperf3", "libiperf0", "dropbear-bin", "iproute2"} <= names


def _make(images: Path, name: str, used_days_ago: float) -> Path:
    path = images / name
    path.mkdir()
    (path / "rootfs.sqfs").write_bytes(b"x" * 10)
    (path / "netlab-image.json").write_text(json.dumps({"id": name[4:], "packages": ["frr"]}))
    (path / "last-used").touch()
    then = time.time() - used_days_ago * 86400
    os.utime(path / "last-used", (then, then))
    return path


def test_images_unused_for_a_week_and_dead_builds_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    images = _cache(tmp_path, monkeypatch)
    old = _make(images, "pkg-0ld", 8)
    recent = _make(images, "pkg-recent", 1)
    busy = _make(images, "pkg-busy", 30)
    dead = images / ".tmp-pkg-dead-abc123"
    (dead / "image").mkdir(parents=True)
    listed = {Path(str(e["path"])).name: e for e in pi.list_images()}
    assert set(listed) == {"pkg-0ld", "pkg-recent", "pkg-busy"}
    assert listed["pkg-recent"]["packages"] == ["frr"] and listed["pkg-recent"]["size_bytes"] == 10
    with pi._lock(images, "busy"):  # a build of it holds the lock
        removed = pi.prune()
    assert sorted(p.name for p in removed) == [".tmp-pkg-dead-abc123", "pkg-0ld"]
    assert recent.is_dir() and busy.is_dir() and not old.exists() and not dead.exists()


def _image(tmp_path: Path, disk: Path | None = None) -> GuestImage:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"k")
    return GuestImage(
        kernel=kernel, initrd=kernel, cmdline="console=ttyS0", root=tmp_path, variant="cloud",
        hash="h", kernel_version="6.1", modules=frozenset({"virtio_net"}), disk=disk,
    )


def test_the_disk_is_attached_read_only_and_identically_in_template_and_clone(tmp_path: Path):
    disk = tmp_path / "rootfs.sqfs"
    disk.write_bytes(b"sqsh")
    plain, packaged = _image(tmp_path), _image(tmp_path, disk)
    store = TemplateStore(tmp_path / "templates", "QEMU 7.2")
    layout = Layout(128, 1, "tcg", (NicLayout("virtio-net-pci"),))
    assert store._digest(layout, plain) != store._digest(layout, packaged)
    config = store.machine_config(layout, packaged, "x")
    assert config.drives == [f"file={disk},if=virtio,format=raw,readonly=on"]
    assert store.machine_config(layout, plain, "x").drives == []
    with pytest.raises(ImageError, match="virtio-net-pci"):
        packaged.for_modules(["e1000"])


def test_topology_packages_for_the_lab_and_per_node():
    topology = Topology.from_dict({
        "lab": {"packages": ["iperf3"]},
        "bridges": {"br1": {}},
        "nodes": {"r1": {"packages": ["frr", "iperf3"], "links": [{"bridge": "br1"}]},
                  "h1": {"links": [{"bridge": "br1"}]}},
    })
    assert topology.packages == ("iperf3",)
    assert topology.nodes["r1"].packages == ("frr", "iperf3")
    assert topology.nodes["h1"].packages is None
    assert topology.node_packages(topology.nodes["h1"]) == ("iperf3",)  # the lab's
    assert topology.node_packages(topology.nodes["r1"]) == ("frr", "iperf3")
    with pytest.raises(ConfigError, match=r"node 'h1'.*'Bad'"):
        Topology.from_dict({"nodes": {"h1": {"packages": ["Bad"]}}})
    generated = Topology.from_dict(
        {"lab": {"packages": ["frr"]}, "generate": {"shape": "line", "routers": 2}}
    )
    assert generated.packages == ("frr",) and generated.nodes
    with pytest.raises(ConfigError, match=r"\[lab\]: unknown key 'image'"):
        Topology.from_dict({"lab": {"image": "x"}})


def test_daemon_names_are_file_names():
    _check_daemon_name("bird-1.v4")
    for bad in ("", "../x", "a b", ".hidden", None):
        with pytest.raises(ConfigError, match="daemon name"):
            _check_daemon_name(bad)


def test_a_bad_packages_option_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "netlab", "--netlab-packages=frr,Bad_Name")
    result.stderr.fnmatch_lines(["*netlab packages 'frr,Bad_Name'*'Bad_Name' is not accepted*"])
    assert result.ret != 0


def test_image_list_shows_each_package_image_with_its_size_and_last_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from pytest_netlab.cli import main

    images = _cache(tmp_path, monkeypatch)
    _make(images, "pkg-0123", 2)
    (images / "pkg-0123" / "rootfs.sqfs").write_bytes(b"x" * 3 * 2**20)
    assert main(["image", "list"]) == 0
    out = capsys.readouterr().out
    day = time.strftime("%Y-%m-%d", time.localtime(time.time() - 2 * 86400))
    assert f"packages frr: 3 MiB, last used {day}" in out and str(images / "pkg-0123") in out
    assert out.startswith("default ")


# the example tests' package set: its image is built (or found) once per machine
EXAMPLE_PACKAGES = "bird2,frr,iperf3,netcat-openbsd,nftables,traceroute,wireguard-tools"


def test_the_packages_option_gives_every_guest_the_package_image(pytester: pytest.Pytester):
    pytester.makepyfile(
        "def test_guest(netlab):\n"
        "    h = netlab.vm('h', nics=[netlab.bridge('lan')])\n"
        "    netlab.start()\n"
        "    assert 'nftables' in h.ssh('nft --version').stdout\n"
        "    assert h.spec.image is None and netlab.default_image.packages\n"
    )
    result = pytester.runpytest_subprocess("-p", "netlab", f"--netlab-packages={EXAMPLE_PACKAGES}")
    result.assert_outcomes(passed=1)


def test_a_topology_gives_nodes_the_image_of_their_packages(netlab, tmp_path: Path):
    topology = Topology.from_dict({
        "lab": {"packages": EXAMPLE_PACKAGES.split(",")},
        "bridges": {"br1": {}},
        "nodes": {"r1": {"links": [{"bridge": "br1"}]},
                  "h1": {"packages": [], "links": [{"bridge": "br1"}]}},
    })
    vms = topology.apply(netlab, start=False)
    image = vms["r1"].spec.image
    assert image is not None and image.disk is not None and image.packages == topology.packages
    assert vms["h1"].spec.image is None  # an empty list: the default image
    with pytest.raises(ConfigError, match=r"no driver for NIC models.*use virtio-net-pci"):
        netlab.vm("h2", nics=[netlab.bridges["br1"].nic(model="e1000")], image=image)
    with pytest.raises(ConfigError, match="image= or kernel="):
        netlab.vm("h3", image=image, kernel=image.kernel)
    with pytest.raises(ConfigError, match="shares need the generic kernel's 9p"):
        netlab.vm("h4", image=image, shares={str(tmp_path): "/mnt/x"})


def test_a_daemon_outlives_its_ssh_command_and_its_log_is_in_the_evidence(netlab, tmp_path: Path):
    from pytest_netlab.artifacts import collect

    vm = netlab.vm("h1", nics=[netlab.bridge("br1")])  # the default image has setsid too
    netlab.start()
    pid = vm.daemon("echo listening; sleep 600; echo not reached", name="sleeper")
    vm.wait_until("grep -q listening /var/log/netlab/sleeper.log")
    assert vm.ssh(f"cat /proc/{pid}/comm").stdout.strip() == "sh"  # the SSH command ended
    assert vm.ssh("pidof sleep").stdout.strip()
    with pytest.raises(ConfigError, match="runs already"):
        vm.daemon("sleep 1", name="sleeper")
    evidence = collect([netlab], tmp_path / "evidence")
    daemons = next(evidence.directory.rglob("daemons.txt")).read_text()
    assert "/var/log/netlab/sleeper.log" in daemons and "listening" in daemons
    assert any("daemon logs" in text and "listening" in text for _, text in evidence.sections)
    vm.stop_daemon("sleeper")  # the whole group: the shell and its sleep
    assert not vm.ssh(f"kill -0 {pid} || pidof sleep", check=False).ok
    with pytest.raises(ConfigError, match="no daemon named 'other'"):
        vm.stop_daemon("other")


def test_one_build_when_several_ask_at_once_and_a_dead_builds_leftover_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from concurrent.futures import ThreadPoolExecutor

    images = _cache(tmp_path, monkeypatch)
    monkeypatch.setattr(pi, "resolve", lambda names: ["frr=8.4"])  # apt's answer, fixed
    builds: list[str] = []

    def build(names, base, image_id, final, progress):  # the recipe, faked: slow and counted
        builds.append(image_id)
        time.sleep(0.5)
        final.mkdir()
        (final / "rootfs.sqfs").write_bytes(b"sqsh")
        (final / "netlab-image.json").write_text(json.dumps({"id": image_id, "packages": list(names)}))

    monkeypatch.setattr(pi, "_build", build)
    base = _image(tmp_path)
    image_id = pi._image_id(("frr",), base, ["frr=8.4"])
    leftover = images / f".tmp-{pi.PREFIX}{image_id}-killed" / "image"  # a build killed with -9
    leftover.mkdir(parents=True)
    (leftover / "rootfs.sqfs").write_bytes(b"half")
    with ThreadPoolExecutor(3) as pool:
        found = list(pool.map(lambda _: pi.package_image(["frr"], base=base), range(3)))
    assert builds == [image_id]
    assert {image.disk for image in found} == {images / f"{pi.PREFIX}{image_id}" / "rootfs.sqfs"}
    assert found[0].cmdline.endswith(OVERLAY_ROOT) and found[0].packages == ("frr",)
    assert not leftover.exists()  # pruned once the build was done
    assert (images / f"{pi.PREFIX}{image_id}" / "last-used").exists()


def test_a_cold_booted_guest_on_a_package_image_has_its_root_on_the_disk(netlab):
    netlab.settings = dataclasses.replace(netlab.settings, boot="cold")
    image = netlab.image(EXAMPLE_PACKAGES)
    vm = netlab.vm("h1", nics=[netlab.bridge("br1")], image=image)
    netlab.start()
    assert vm.machine is not None and vm.machine.config.incoming is None  # booted, not resumed
    mounts = vm.ssh("cat /proc/mounts").stdout
    assert "overlay / overlay" in mounts
    assert vm.ssh("command -v wg").stdout.strip() == "/usr/bin/wg"
    vm.ssh("ip link add wg0 type wireguard && ip link del wg0")  # the module loads from the disk


def test_clones_of_a_package_image_template_make_different_keys_right_after_start(netlab):
    # the symptom reported: `wg genkey` right after start() gave one key in three clones
    image = netlab.image(EXAMPLE_PACKAGES)
    br1 = netlab.bridge("br1")
    vms = [netlab.vm(f"h{i}", nics=[br1], image=image) for i in (1, 2, 3)]
    netlab.start()

    check = "wg genkey; test -x /usr/lib/netlab/reseed && echo reseed-ok"
    with ThreadPoolExecutor(len(vms)) as pool:
        outputs = list(pool.map(lambda vm: vm.ssh(check).stdout.split(), vms))
    assert all(len(out) == 2 and out[1] == "reseed-ok" for out in outputs), outputs
    assert len({out[0] for out in outputs}) == len(vms), f"clones made the same key: {outputs}"
