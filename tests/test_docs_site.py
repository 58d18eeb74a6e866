"""The docs site as a reader sees it: built with ``mkdocs build --strict``, served on 127.0.0.1
and opened page by page in a headless Chromium (Debian's ``chromium`` and ``chromium-driver``;
nothing is downloaded at run time). Every page loads without console errors, every Mermaid
diagram is drawn as SVG, and the code the pages include from the tests is on them."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INCLUDE = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$', re.M)


def _pages() -> list[Path]:
    return sorted(p.relative_to(DOCS) for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def _url_path(page: Path) -> str:
    return "" if page.name == "index.md" else page.with_suffix("").as_posix() + "/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The built site, served over HTTP on 127.0.0.1; yields its base URL."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    handler = functools.partial(_QuietHandler, directory=str(out))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/"
        server.shutdown()
        thread.join()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"no headless browser: {CHROMIUM} and {CHROMEDRIVER} "
                    "(apt-get install chromium chromium-driver; setup.sh does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(condition: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _expected_code(page: Path) -> list[str]:
    """A line of each included file (its first test's name) or section (its first line)."""
    wanted = []
    for path, section in INCLUDE.findall((DOCS / page).read_text()):
        text = (ROOT / path).read_text()
        if section:
            body = text.split(f"# --8<-- [start:{section}]\n", 1)[1]
            wanted.append(next(line.strip() for line in body.splitlines() if line.strip()))
        elif first_test := re.search(r"^def (test_\w+)", text, re.M):
            wanted.append(first_test.group(1))
        else:
            wanted.append(next(line for line in text.splitlines() if line and not line.startswith("#")))
    return wanted


def _diagram_svg_areas(browser: Any) -> list[float]:
    """Material draws each diagram into a closed shadow root of a ``div.mermaid``, out of reach
    of page scripts; the DevTools protocol sees through it. The area of each SVG drawn there."""
    tree = browser.execute_cdp_cmd("DOM.getDocument", {"depth": -1, "pierce": True})
    areas = []
    stack = [(tree["root"], False)]
    while stack:
        node, in_diagram = stack.pop()
        if in_diagram and node.get("localName") == "svg":
            model = browser.execute_cdp_cmd("DOM.getBoxModel", {"nodeId": node["nodeId"]})["model"]
            areas.append(model["width"] * model["height"])
            continue
        attributes = node.get("attributes", [])
        classes = dict(zip(attributes[::2], attributes[1::2], strict=True)).get("class", "").split()
        diagram = node.get("localName") == "div" and "mermaid" in classes
        stack += [(child, in_diagram) for child in node.get("children", [])]
        stack += [(root, in_diagram or diagram) for root in node.get("shadowRoots", [])]
    return areas


@pytest.mark.parametrize("page", _pages(), ids=str)
def test_every_page_loads_draws_its_diagrams_and_shows_the_included_code(browser, site, page):
    browser.get_log("browser")  # what earlier pages left
    browser.get(site + _url_path(page))
    assert _wait(lambda: browser.execute_script("return document.readyState") == "complete")
    title = browser.find_element("css selector", "article h1").text
    assert title, f"docs/{page} has no title"

    diagrams = (DOCS / page).read_text().count("```mermaid\n")
    if diagrams:
        drawn = "return document.querySelectorAll('article div.mermaid').length"
        assert _wait(lambda: browser.execute_script(drawn) == diagrams), (
            f"docs/{page}: {diagrams} diagram(s) not drawn in 30 s; console: {browser.get_log('browser')}"
        )
        areas = _diagram_svg_areas(browser)
        assert len(areas) == diagrams and all(areas), f"docs/{page}: {diagrams} diagram(s), SVG areas {areas}"
    assert not browser.execute_script("return document.querySelectorAll('pre.mermaid').length")

    text = browser.execute_script("return document.querySelector('article').textContent")
    for line in _expected_code(page):
        assert line in text, f"docs/{page} does not show the included {line!r}"

    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"docs/{page}: console errors: {errors}"
    # offline readers and CI: fonts, scripts and styles all come from the site itself
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [url for url in loaded if not url.startswith(site)] == [], f"docs/{page} fetched from elsewhere"


def _readme_quick_start() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.removeprefix("sudo ") for line in block.splitlines() if line.strip()]


ADDOPTS = "PYTEST_ADDOPTS"


def _ci_jobs(path: Path) -> dict[str, tuple[list[str], str]]:
    """Each job of a GitHub Actions or GitLab CI file: its commands, and its PYTEST_ADDOPTS."""
    config = yaml.safe_load(path.read_text())
    if "jobs" in config:
        return {
            name: ([s["run"] for s in job["steps"] if "run" in s], job.get("env", {}).get(ADDOPTS, ""))
            for name, job in config["jobs"].items()
        }
    return {
        name: (job["script"], job.get("variables", {}).get(ADDOPTS, ""))
        for name, job in config.items() if isinstance(job, dict) and "script" in job
    }


@pytest.mark.parametrize("example", ["github-actions.yml", "gitlab-ci.yml"])
def test_the_ci_examples_run_the_readme_commands_with_and_without_kvm(example):
    jobs = _ci_jobs(DOCS / "ci" / example)
    setup, run_tests = _readme_quick_start()
    assert len(jobs) == 2, jobs
    for name, (commands, _) in jobs.items():
        assert commands[0] == setup, f"{example}: job {name} starts with {commands[0]!r}, not {setup!r}"
        assert commands[-1] == run_tests, f"{example}: job {name} ends with {commands[-1]!r}"
    # one job leaves the accelerator to `auto` (KVM where it works), the other is TCG with more time
    addopts = sorted(options for _, options in jobs.values())
    assert addopts[0] == "" and "--netlab-accel=tcg" in addopts[1], jobs
    documented = (DOCS / "options.md").read_text()
    for option in addopts[1].split():
        assert f"`{option.split('=')[0]}=" in documented, f"{example}: {option} is not a documented option"


def test_the_example_tests_need_nothing_but_the_plugin():
    # the docs include each example file whole: a conftest would be code the reader never sees
    assert not list(ROOT.glob("conftest.py")) + list((ROOT / "example_tests").rglob("conftest.py"))


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    listed = set(re.findall(r"([\w/.-]+\.md)$", nav, re.M))
    assert {page.as_posix() for page in _pages()} == listed


def _mermaid_hook() -> Any:
    spec = importlib.util.spec_from_file_location("mermaid_hook", DOCS / "_hooks" / "mermaid.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _npm_tarball(script: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        member = tarfile.TarInfo("package/dist/mermaid.min.js")
        member.size = len(script)
        archive.addfile(member, io.BytesIO(script))
    return out.getvalue()


def _serve_tarball(monkeypatch: pytest.MonkeyPatch, hook: Any, tarball: bytes) -> None:
    monkeypatch.setattr(hook.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(tarball))


def _config(docs_dir: Path) -> MkDocsConfig:
    config = MkDocsConfig()
    config.load_dict({"site_name": "t", "docs_dir": str(docs_dir)})
    errors, _ = config.validate()
    assert not errors
    return config


def test_the_mermaid_hook_puts_the_checked_script_in_docs_and_on_every_page(tmp_path, monkeypatch):
    hook = _mermaid_hook()
    tarball = _npm_tarball(b"window.mermaid = {};")
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    monkeypatch.setattr(hook, "INTEGRITY", f"sha512-{digest}")
    _serve_tarball(monkeypatch, hook, tarball)
    stale = tmp_path / "assets" / "javascripts" / "mermaid-10.0.0.min.js"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    config = _config(tmp_path)
    hook.on_config(config)
    assert (tmp_path / hook.SCRIPT).read_bytes() == b"window.mermaid = {};"
    assert not stale.exists()
    assert [str(script) for script in config.extra_javascript] == [hook.SCRIPT]


def test_the_mermaid_hook_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    hook = _mermaid_hook()
    _serve_tarball(monkeypatch, hook, _npm_tarball(b"alert('not mermaid')"))
    config = _config(tmp_path)
    with pytest.raises(PluginError, match=r"has checksum sha512-\S+, not the pinned sha512-"):
        hook.on_config(config)
    assert not list(tmp_path.rglob("*.js")) + list(tmp_path.rglob("*.part"))
