"""The user docs speak to users: no page outside the changelog mentions development history
(work sessions, issue numbers, commit hashes, dates of measurement runs, "this VM", "the
previous commit"). History goes to CHANGELOG.md.

A results page (docs/results/) may name its code version on one line, its provenance line
("Code version `abc1234`. Written by ..."). docs/results/critic_free/ compares three code
versions with each other: the versions are its subject, so it is exempt.
"""

from __future__ import annotations

import re

import pytest
from helpers import REPO

HISTORY = {
    "a work session": re.compile(r"(?<!own )(?<!new )\bsessions?\b", re.I),
    "an issue number": re.compile(r"\b(issues?|PR) #?\d+|(?<![\w&])#\d{1,4}\b", re.I),
    "a commit hash": re.compile(
        r"(?<![\w/.-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w/-])"
    ),
    "the machine's history": re.compile(r"\bthis VM\b", re.I),
    "the development process": re.compile(
        r"\b(the|this|open) issue\b|\bissue's\b|\b(previous|this|next) commit\b", re.I
    ),
    "a date": re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b"),
}
EXEMPT = {"docs/changelog.md", "docs/results/critic_free/README.md"}
PAGES = ["README.md"] + sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "docs").rglob("*.md")
    if str(p.relative_to(REPO)) not in EXEMPT
)


def history(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, line) for every line of `text` that speaks of development history,
    outside code blocks (commands and output may hold anything)."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        found += [(number, what, line.strip()) for what, rx in HISTORY.items() if rx.search(line)]
    return found


@pytest.mark.parametrize("page", PAGES)
def test_a_user_page_does_not_speak_of_development_history(page):
    found = history((REPO / page).read_text(encoding="utf-8"))
    if page.startswith("docs/results/"):
        lines = {n for n, _, line in found}
        provenance = [n for n, _, line in found if line.startswith("Code version")]
        assert len(lines) <= 1 and lines <= set(provenance[:1]), (
            f"{page}: only the provenance line ('Code version ...') may name a version: {found}"
        )
        return
    assert not found, "\n".join(f"{page}:{n}: {what}: {line}" for n, what, line in found)


def test_the_history_detector():
    assert history("Measured in the second session.")
    assert history("code version b667700 (GRPO: f1f9225)")
    assert history("see issue 16") and history("the issue's bar") and history("on 2026-11-30")
    assert history("the previous commit") and history("this VM drifts")
    # not history: a process session, paths and ids, plain numbers and words
    assert not history("torchrun starts the ranks in their own sessions; a new session")
    assert not history("runs/critic_free/ae3b878/compare.md and 1000000 steps, a decade")
    assert not history("```\ncommit 5ab058f\n```")
