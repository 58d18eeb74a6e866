"""Checks of user input, each raising :class:`ConfigError` with one line that names the
bad value and says what is accepted. Nothing here touches the system."""

from __future__ import annotations

import ipaddress
import re

from .errors import ConfigError

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL
_IFNAME_BAD = re.compile(r"[\s/:%]")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_GUEST_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,30}$")

NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")


def interface_name(name: object, what: str = "interface name") -> str:
    """Return *name* if Linux accepts it as an interface name."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} {name!r} is not accepted: give a non-empty string")
    if len(name.encode()) >= IFNAMSIZ:
        raise ConfigError(
            f"{what} {name!r} is {len(name.encode())} bytes long: "
            f"Linux accepts at most {IFNAMSIZ - 1}"
        )
    if name in (".", "..") or _IFNAME_BAD.search(name) or not name.isprintable():
        raise ConfigError(
            f"{what} {name!r} is not accepted: no whitespace, '/', ':', '%' "
            "or control characters, and not '.' or '..'"
        )
    return name


def guest_name(name: object) -> str:
    """Return *name* if it is usable as a guest's name and hostname."""
    if not isinstance(name, str) or not _GUEST_NAME.match(name):
        raise ConfigError(
            f"guest name {name!r} is not accepted: use a letter followed by up to 30 "
            "letters, digits or '-'"
        )
    return name


def mac_address(mac: object) -> str:
    """Return *mac* in lower case if it is a usable unicast MAC address."""
    if not isinstance(mac, str) or not _MAC.match(mac):
        raise ConfigError(
            f"MAC address {mac!r} is not accepted: use six hex byte pairs "
            "separated by ':', e.g. 52:54:00:12:34:56"
        )
    if int(mac[:2], 16) & 1:
        raise ConfigError(
            f"MAC address {mac!r} is a multicast address (lowest bit of the first byte "
            "set): a NIC needs a unicast MAC, e.g. 52:54:00:12:34:56"
        )
    return mac.lower()


def nic_model(model: object) -> str:
    """Return *model* if QEMU's guests here can use it as a NIC model."""
    if model not in NIC_MODELS:
        raise ConfigError(
            f"NIC model {model!r} is not supported: use one of {', '.join(NIC_MODELS)}"
        )
    assert isinstance(model, str)
    return model


def _no_scope(value: object, what: str, example: str) -> str:
    """*value* as a string without an IPv6 scope id (``%eth0``): Python's ``ipaddress``
    takes any text after ``%``, newlines too, and addresses end up in guest commands."""
    if not isinstance(value, str) or "%" in value or not value.isprintable():
        raise ConfigError(
            f"{what} {value!r} is not accepted: give {example} (no scope id '%...', "
            "no control characters)"
        )
    return value


def ip_interface(value: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """Parse an address with prefix length, e.g. ``10.20.10.1/24``."""
    example = "an address with a prefix length, e.g. 10.20.10.1/24 or fd00::1/64"
    text = _no_scope(value, "address", example)
    try:
        if "/" not in text:
            raise ValueError
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ConfigError(f"address {value!r} is not accepted: give {example}") from None


def ip_address(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse a plain IPv4 or IPv6 address, e.g. ``10.20.20.1``."""
    example = "an IPv4 or IPv6 address, e.g. 10.20.20.1 or fd00::1"
    text = _no_scope(value, "address", example)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"address {value!r} is not accepted: give {example}") from None


def ip_network(value: object, what: str = "network") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse a network without host bits, e.g. ``10.20.10.0/24``."""
    example = "a network, e.g. 10.20.10.0/24 or fd00::/64"
    text = _no_scope(value, what, example)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not accepted: give {example}") from None


def is_ip_address(value: object) -> bool:
    """Whether *value* is accepted by :func:`ip_address`."""
    try:
        ip_address(value)
    except ConfigError:
        return False
    return True


def int_in_range(value: object, low: int, high: int, what: str, unit: str = "") -> int:
    """Return *value* if it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{what} {value!r} is out of range: give a whole number from {low} to {high}{unit}"
        )
    return value


def positive_seconds(value: object, what: str) -> float:
    """Return *value* as float if it is a positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{what} {value!r} is not accepted: give a number of seconds above 0")
    return float(value)
