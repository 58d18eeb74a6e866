"""Document 000, "Configure NUMA" (`-object memory-backend-ram,size=...,id=mem0 -numa
node,memdev=mem0`): the guest finds one NUMA node holding its memory, from the firmware's
tables (SRAT) rather than the kernel's single fake node."""

from __future__ import annotations


def test_one_numa_node_from_a_memory_backend(netlab):
    vm = netlab.vm("h1", memory=256, numa=True)
    netlab.start()

    assert vm.ssh("ls -d /sys/devices/system/node/node*").stdout.split() == ["/sys/devices/system/node/node0"]
    dmesg = vm.ssh("dmesg").stdout
    assert "SRAT" in dmesg and "Faking a node" not in dmesg
    meminfo = vm.ssh("cat /sys/devices/system/node/node0/meminfo").stdout
    total_kib = int(next(line for line in meminfo.splitlines() if "MemTotal" in line).split()[-2])
    assert 150 * 1024 < total_kib <= 256 * 1024
