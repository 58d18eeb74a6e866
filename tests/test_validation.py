"""Bad input gets one line naming the value and what is accepted (pure logic, no lab)."""

from __future__ import annotations

import pytest

from pytest_netlab import ConfigError, validation
from pytest_netlab.topology import GuestSpec, NicSpec, lab_mac, tap_name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("a" * 16, "at most 15"),
        ("", "non-empty"),
        ("br 1", "no whitespace"),
        ("br/1", "no whitespace"),
        ("..", "no whitespace"),
        (5, "non-empty string"),
    ],
)
def test_bad_interface_names(name, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        validation.interface_name(name)
    assert "\n" not in str(info.value) and repr(name) in str(info.value)


def test_fifteen_byte_interface_name_is_fine():
    assert validation.interface_name("a" * 15) == "a" * 15


@pytest.mark.parametrize("mac", ["52:54:00:12:34", "52-54-00-12-34-56", "zz:54:00:12:34:56"])
def test_malformed_macs(mac):
    with pytest.raises(ConfigError, match="six hex byte pairs"):
        validation.mac_address(mac)


def test_multicast_mac_is_refused():
    with pytest.raises(ConfigError, match="multicast"):
        validation.mac_address("01:00:5e:00:00:01")


def test_mac_is_lowercased():
    assert validation.mac_address("12:34:56:AB:CD:7B") == "12:34:56:ab:cd:7b"


def test_unknown_nic_model():
    with pytest.raises(ConfigError, match=r"'ne2k_pci'.*virtio-net-pci, e1000, rtl8139"):
        NicSpec("br1", model="ne2k_pci").validated()


def test_multiqueue_needs_virtio():
    with pytest.raises(ConfigError, match="only virtio-net-pci"):
        NicSpec("br1", model="e1000", queues=4).validated()


@pytest.mark.parametrize("value", ["10.0.0.1", "10.0.0.300/24", "fd00::1/129"])
def test_bad_cidr(value):
    with pytest.raises(ConfigError, match="with a prefix length"):
        validation.ip_interface(value)


def test_bad_address():
    with pytest.raises(ConfigError, match=r"'10\.0\.0' is not accepted"):
        validation.ip_address("10.0.0")


@pytest.mark.parametrize(
    ("field", "value"), [("memory", 16), ("memory", 10**7), ("cpus", 0), ("cpus", 999), ("cpus", True)]
)
def test_sizes_out_of_range(field, value):
    with pytest.raises(ConfigError, match="out of range: give a whole number from"):
        GuestSpec("h1", **{field: value}).validated()


def test_missing_user_image(tmp_path):
    missing = tmp_path / "bzImage"
    with pytest.raises(ConfigError, match="does not exist"):
        GuestSpec("h1", kernel=missing).validated()


def test_unreadable_user_image(tmp_path):
    directory = tmp_path / "rootfs.ext4"
    directory.mkdir()
    with pytest.raises(ConfigError, match="not a file"):
        GuestSpec("h1", kernel=directory).validated()


@pytest.mark.parametrize("name", ["1h", "h_1", "h" * 40, "h 1"])
def test_bad_guest_names(name):
    with pytest.raises(ConfigError, match="guest name"):
        GuestSpec(name).validated()


def test_tap_names_follow_the_documents():
    assert [tap_name(1, 1), tap_name(1, 2), tap_name(2, 1)] == ["vport11", "vport12", "vport21"]
    assert tap_name(1, 10) == "vp1.10"


def test_lab_macs_are_distinct():
    macs = {lab_mac(g, n) for g in range(1, 20) for n in range(4)}
    assert len(macs) == 19 * 4


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (GuestSpec("h1", network=False, nics=[NicSpec("br1")]), "network=False means no NIC"),
        (GuestSpec("h1", network=False, forwards=[80]), "network=False means no NIC"),
        (GuestSpec("h1", forwards=[70000]), "out of range"),
        (GuestSpec("h1", forwards=[80, 80]), "forwarded already"),
        (GuestSpec("h1", forwards=[22]), "forwarded already"),
    ],
)
def test_bad_network_options(spec, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        spec.validated()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "nic",
    [NicSpec(None, tap="vport11"), NicSpec(None, queues=2), NicSpec(None, vectors=4)],
)
def test_nat_nic_takes_only_model_and_mac(nic):
    with pytest.raises(ConfigError, match="user-mode NAT NIC"):
        nic.validated()


def test_nat_nic_with_a_bad_model():
    with pytest.raises(ConfigError, match="ne2k_pci"):
        NicSpec(None, model="ne2k_pci").validated()


def test_numa_is_part_of_the_template_layout(tmp_path):
    from pytest_netlab.image import GuestImage
    from pytest_netlab.templates import Layout, NicLayout, TemplateStore

    plain = Layout(128, 1, "tcg", (NicLayout("virtio-net-pci"),))
    numa = Layout(128, 1, "tcg", (NicLayout("virtio-net-pci"),), numa=True)
    assert plain != numa
    # the saved state's file is named by the digest: NUMA and plain guests must not share one
    for name in ("vmlinux", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    image = GuestImage(tmp_path / "vmlinux", tmp_path / "initrd.img", "quiet", tmp_path, "test", "0",
                       "6.1", frozenset(), tmp_path / "vmlinux")
    store = TemplateStore(tmp_path / "templates", "7.2.0")
    assert store._digest(plain, image) != store._digest(numa, image)
    assert store._digest(numa, image) == store._digest(
        Layout(128, 1, "tcg", (NicLayout("virtio-net-pci"),), numa=True), image
    )
