"""Host directories in a guest (virtio-9p): the guest runs a script the test has just
written on the host, and writes its result where the host reads it; a read-only share
refuses writes."""

from __future__ import annotations


def test_guest_runs_a_host_script_and_writes_back(netlab, tmp_path):
    tools, results = tmp_path / "tools", tmp_path / "results"
    tools.mkdir()
    results.mkdir()
    vm = netlab.vm("builder", shares=[
        netlab.share(tools, "/opt/tools"),  # read-only unless rw=True
        netlab.share(results, "/mnt/results", rw=True),
    ])
    netlab.start()

    # written after start: the guest sees host files as they are now
    script = tools / "report.sh"
    script.write_text('#!/bin/sh\necho "$(hostname) ran $0" > /mnt/results/report.txt\n')
    script.chmod(0o755)
    vm.ssh("/opt/tools/report.sh")
    assert (results / "report.txt").read_text() == "builder ran /opt/tools/report.sh\n"

    refused = vm.ssh("touch /opt/tools/new-file", check=False)
    assert refused.status != 0 and "Read-only file system" in refused.stderr
    assert not (tools / "new-file").exists()
