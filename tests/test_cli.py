"""``netlab up``: a lab from a topology file, the way to reach each guest, then down."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
    assert f"  lab namespace: nsenter --net=/run/netns/{name.group(1)}" in out
    for guest in ("h1", "rt2", "h2"):
        assert re.search(rf"^  {guest}: ssh -i \S+id_ed25519 -p \d+ .* root@127\.0\.0\.1$", out, re.M), out
    assert '    n_rt2{{"rt2 (router)<br/>forwarding"}}' in out
    assert out.rstrip().endswith(f"lab {name.group(1)} is down")
    assert not Path(f"/run/netns/{name.group(1)}").exists()
    assert (tmp_path / "h1" / "console.log").exists()


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
