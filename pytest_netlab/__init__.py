"""pytest-netlab: network labs of QEMU guests on bridges in network namespaces, as pytest tests."""

from __future__ import annotations

import logging

from .constants import NAT_HOST
from .errors import (
    BootTimeout,
    CommandError,
    CommandTimeout,
    ConfigError,
    GuestGoneError,
    LabError,
    NetlabError,
    QemuError,
    SSHError,
    TransferError,
    WaitTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "NAT_HOST",
    "BootTimeout",
    "CommandError",
    "CommandTimeout",
    "ConfigError",
    "GuestGoneError",
    "LabError",
    "NetlabError",
    "QemuError",
    "SSHError",
    "TransferError",
    "WaitTimeout",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
