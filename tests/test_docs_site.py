"""The documentation site builds with `mkdocs build --strict`: no broken link, no page missing
from the files, no unresolved API reference (skipped where the `docs` extra is not installed;
CI installs it and builds the site in .ci/run too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # not --quiet: it hides the warnings that --strict counts (a broken link would pass)
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    command += ["-f", str(config), "--site-dir", str(site)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_the_docs_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "material"):
        pytest.importorskip(module)
    done = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """The check itself: a page with a link to a missing page does not build."""
    pytest.importorskip("mkdocs")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# x\n\n[broken](missing.md)\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: x\ndocs_dir: docs\n")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "missing.md" in done.stderr
