"""``pytest-netlab up``: a lab from a topology file, the way to reach each guest, then down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pytest_netlab.netns import namespace_exists

THREE = Path(__file__).parent.parent / "example_tests" / "topologies" / "three_machines.toml"


def test_up_prints_how_to_reach_each_guest_and_tears_down(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_netlab.cli", "up", str(THREE), "--hold", "0", "--accel", "tcg",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, env=os.environ,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    name = re.search(r"lab (netlab-\d+-\d+) is up", out)
    assert name, out
    if os.geteuid() == 0:
        assert f"  lab namespace: nsenter --net=/run/netns/{name.group(1)} -- bash" in out
    else:  # a rootless lab: its holder's user and network namespaces
        assert re.search(r"^  lab namespace: nsenter --user=/proc/\d+/ns/user --net=/proc/\d+/ns/net "
                         r"--preserve-credentials -- bash$", out, re.M), out
    for guest in ("h1", "rt2", "h2"):
        assert re.search(rf"^  {guest}: ssh -i \S+id_ed25519 -p \d+ .* root@127\.0\.0\.1$", out, re.M), out
    assert '    n_rt2{{"rt2 (router)<br/>forwarding"}}' in out
    assert out.rstrip().endswith(f"lab {name.group(1)} is down")
    assert not namespace_exists(name.group(1))
    assert (tmp_path / "h1" / "console.log").exists()
    # the tools' files, by guest name: ssh -F, ansible -i (docs/access.md)
    assert f"  by guest name: ssh -F {tmp_path}/ssh_config GUEST" in out
    hosts = re.findall(r"^Host (\S+)$", (tmp_path / "ssh_config").read_text(), re.M)
    assert hosts == ["h1", "rt2", "h2", "*"]
    inventory = (tmp_path / "inventory.yml").read_text()
    assert re.search(r'^    routers:\n      hosts:\n        "rt2":\n', inventory, re.M), inventory


def test_image_clean_removes_images_and_their_saved_boots(tmp_path, monkeypatch, capsys):
    from pytest_netlab.cli import main

    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path))
    (tmp_path / "images" / "cloud-0123456789abcdef").mkdir(parents=True)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "layout.state").write_bytes(b"saved")

    assert main(["image", "clean"]) == 0

    assert not (tmp_path / "images" / "cloud-0123456789abcdef").exists()
    assert not (tmp_path / "templates" / "layout.state").exists()
    assert "layout.state" in capsys.readouterr().out


def test_image_build_of_a_cached_image_and_image_info(capsys):
    from pytest_netlab.cli import main

    assert main(["image", "build"]) == 0  # cached: says where, builds nothing
    kernel, initrd = capsys.readouterr().out.splitlines()[-2:]
    assert kernel.startswith("kernel /") and initrd.startswith("initrd /")

    assert main(["image", "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["built"] is True
    assert kernel.removeprefix("kernel ").startswith(info["path"])


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_down_without_a_name_takes_the_only_detached_lab_and_all_takes_every_one(
    tmp_path, monkeypatch, capsys
):
    from pytest_netlab.cli import main
    from pytest_netlab.detached import DetachedLab, detached_labs

    # a runtime directory of this test's own: the machine's detached labs are never touched
    monkeypatch.setattr("pytest_netlab.session.runtime_base", lambda: tmp_path)
    assert main(["down", "--all"]) == 0
    assert capsys.readouterr().out == "no detached labs\n"
    assert main(["down"]) == 1
    assert "no detached labs to tear down" in capsys.readouterr().err

    # owners that died (kill -9): down removes what they left
    def dead_lab() -> DetachedLab:
        pid = _a_dead_pid()
        lab = DetachedLab(f"netlab-{pid}-1", pid, "t.toml", str(tmp_path), "")
        lab.save(tmp_path)
        return lab

    only = dead_lab()
    assert main(["down"]) == 0
    assert f"lab {only.name}: its owner (pid {only.pid}) was gone" in capsys.readouterr().out

    for _ in range(2):
        dead_lab()
    assert main(["down"]) == 1
    assert "name the one to tear down, or give --all" in capsys.readouterr().err
    assert main(["down", "--all"]) == 0
    assert detached_labs(tmp_path) == []


def test_up_takes_a_generated_topology(tmp_path):
    topology = tmp_path / "star.toml"
    topology.write_text('[generate]\nshape = "star"\nhosts = 2\n')
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_netlab.cli", "up", str(topology), "--hold", "0", "--accel", "tcg",
         "--workdir", str(tmp_path / "lab")],
        capture_output=True, text=True, timeout=300, check=False, env=os.environ,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for guest in ("hub", "h1", "h2"):
        assert re.search(rf"^  {guest}: ssh ", proc.stdout, re.M), proc.stdout
    assert '    n_hub{{"hub (router)<br/>forwarding"}}' in proc.stdout


def test_the_command_is_pytest_netlab_and_python_m_runs_it():
    # "netlab" is ipspace netlab's command (netlab up/down): ours must not shadow it
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"pytest-netlab": "pytest_netlab.cli:main"}
    shown = subprocess.run([sys.executable, "-m", "pytest_netlab", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert shown.startswith("usage: pytest-netlab ")


def test_no_doc_or_message_tells_users_to_type_netlab_verbs():
    root = Path(__file__).parents[1]
    verbs = "up|down|image|doctor|cleanup|list|ssh|exec|capture|graph"
    typed = re.compile(rf"(?<![\w.\-/])(?<!-p )netlab ({verbs})\b")
    found = [
        f"{path.relative_to(root)}: {match.group(0)}"
        for path in [root / "README.md", *root.glob("docs/**/*.md"), *root.glob("pytest_netlab/*.py")]
        for match in typed.finditer(path.read_text())
    ]
    assert found == []
