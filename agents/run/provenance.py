"""Where a result came from: the code version and the machine, for the provenance line of a
results page (`textrlhf compare`'s compare.md, benchmarks/task_results.py)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@functools.cache  # the code a process runs is the code it imported: one `git describe` each
def code_version() -> str:
    """`git describe --always --dirty` of the checkout this code runs from, or "unknown" (an
    installed copy, or no git)."""
    if not (REPO / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True, text=True, cwd=REPO, check=False, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> str:
    """The CPU model, its core count and the OS, as far as Python can tell."""
    model = platform.processor() or platform.machine() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()}"


def provenance_line(run_versions: Iterable[str | None] = ()) -> str:
    """'Code version `abc1234`, on <machine>.': one line for a results page. `run_versions`: the
    code versions the runs recorded when they trained (summary.json `code_version`); when every
    run has one, the line names those (the page may be written later, from other code), else the
    version of the code writing the page."""
    recorded = list(run_versions)
    if recorded and all(recorded):
        versions = ", ".join(f"`{v}`" for v in dict.fromkeys(recorded))
        plural = "s" if "," in versions else ""
        return f"Code version{plural} {versions} (recorded by the runs), on {machine()}."
    return f"Code version `{code_version()}`, on {machine()}."
