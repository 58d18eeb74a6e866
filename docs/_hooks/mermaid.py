"""MkDocs hook: the site draws its Mermaid diagrams with a local copy of mermaid.js.

Material for MkDocs loads mermaid.js from unpkg.com unless a ``mermaid`` global already exists;
a CDN cannot be reached from CI or an offline reader's machine. The pinned release is fetched
once from the npm registry, checked against its published sha512, and kept in docs/ (ignored by
git: 3.5 MB of minified code does not belong in the history), then added to the pages' scripts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError

# Material 9.x drives the mermaid 11 API; bump both lines together (`npm view mermaid@11 dist.integrity`)
VERSION = "11.17.2"
INTEGRITY = "sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg=="
TARBALL = f"https://registry.npmjs.org/mermaid/-/mermaid-{VERSION}.tgz"
SCRIPT = f"assets/javascripts/mermaid-{VERSION}.min.js"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    target = Path(config.docs_dir) / SCRIPT
    if not target.exists():
        script = _fetch_minified_script()
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob("mermaid-*.min.js"):
            if stale.name != target.name:  # another build (an xdist worker) may have just made it
                stale.unlink(missing_ok=True)
        # builds at once each write a file of their own; the rename puts a whole one in place
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as partial:
            partial.write(script)
        os.replace(partial.name, target)
    config.extra_javascript.append(SCRIPT)
    return config


def _fetch_minified_script() -> bytes:
    try:
        with urllib.request.urlopen(TARBALL, timeout=60) as response:
            tarball: bytes = response.read()
    except OSError as exc:
        raise PluginError(
            f"mermaid {VERSION} could not be fetched from {TARBALL} ({exc}); without it the "
            f"diagrams are not drawn: put package/dist/mermaid.min.js of that tarball at docs/{SCRIPT}"
        ) from exc
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != INTEGRITY:
        raise PluginError(f"{TARBALL} has checksum {digest}, not the pinned {INTEGRITY}")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        member = archive.extractfile("package/dist/mermaid.min.js")
        if member is None:
            raise PluginError(f"{TARBALL} holds no package/dist/mermaid.min.js")
        return member.read()
