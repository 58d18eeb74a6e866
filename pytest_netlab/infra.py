"""testinfra (pytest-testinfra) hosts for guests: ``vm.testinfra``.

testinfra's paramiko backend reads the lab's ``ssh_config`` (address, port, user, key)
but accepts any host key with a warning; the backend here also loads the lab's
``known_hosts`` and refuses a key that is not there, so a testinfra host checks the
guest the way ``ssh -F`` and the plugin do. One SSH connection per host, kept.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import paramiko

    from .guest import VM

try:
    from testinfra.backend.paramiko import ParamikoBackend
    from testinfra.host import Host
except ImportError:  # the optional extra is not installed: said when a host is asked for
    ParamikoBackend = object
    Host = None


class PinnedParamikoBackend(ParamikoBackend):  # type: ignore[misc]
    """testinfra's paramiko backend with the host keys of *known_hosts* pinned."""

    NAME = "netlab-paramiko"

    def __init__(self, hostspec: str, *, ssh_config: Path, known_hosts: Path, **kwargs: Any) -> None:
        super().__init__(hostspec, ssh_config=str(ssh_config), **kwargs)
        self.known_hosts = known_hosts

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        cfg: dict[str, Any] = {"hostname": self.host.name, "port": 22, "timeout": self.timeout}
        config = paramiko.SSHConfig.from_path(self.ssh_config)
        self._load_ssh_config(client, cfg, config, str(Path(self.ssh_config).parent))
        client.connect(**cfg, look_for_keys=False, allow_agent=False)
        return client


def testinfra_host(vm: VM) -> Any:
    """A ``testinfra.host.Host`` for *vm* over SSH with the lab's ``ssh_config`` and
    pinned host key (the lab's access files are written first).

    Raises:
        ConfigError: pytest-testinfra is not installed.
        LabError: the guest is not started or has no network.
    """
    if Host is None:
        raise ConfigError(
            "vm.testinfra needs pytest-testinfra: pip install 'pytest-netlab[testinfra]'"
        )
    from .access import write_access_files

    vm.host_port(22)  # a guest not started, or without network, is refused here
    files = write_access_files(vm.context)
    backend = PinnedParamikoBackend(
        vm.name, ssh_config=files.ssh_config, known_hosts=files.known_hosts,
        timeout=int(max(10, vm.context.settings.command_timeout)),
    )
    return Host(backend)
