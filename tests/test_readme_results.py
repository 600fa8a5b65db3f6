"""The README's results table is a front page's table: at most 8 rows, each with its unit and
direction ("higher is better" / "lower is better") and a link to the page with the details, and
every number in it found in that page, so the table cannot drift from the measurements."""

from __future__ import annotations

import re

from helpers import REPO

NUMBER = re.compile(r"(?<![\w.])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")


def results_rows() -> list[dict[str, str]]:
    """The rows of the table under the README's '## Results' heading, by column name."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        for line in lines[2:]
    ]


def numbers(text: str) -> list[str]:
    """The numbers written in `text` (signs kept, markdown emphasis ignored)."""
    return NUMBER.findall(text.replace("*", ""))


def test_the_results_table_has_at_most_8_rows_each_with_unit_direction_and_link():
    rows = results_rows()
    assert 1 <= len(rows) <= 8, f"{len(rows)} rows: a front page shows at most 8"
    for row in rows:
        assert re.search(r"(higher|lower) is better", row["unit, direction"]), row
        links = LINK.findall(row["details"])
        assert links, f"no link to the details: {row['what']}"
        for link in links:
            assert (REPO / link).is_file(), f"{link} does not exist"
        if "higher" in row["unit, direction"] and "seeds" in row["what"]:
            assert "±" in row["result"], f"a learning result is mean ± std: {row['what']}"


def test_every_number_of_the_results_table_is_in_the_page_it_links_to():
    for row in results_rows():
        pages = [(REPO / link).read_text(encoding="utf-8") for link in LINK.findall(row["details"])]
        text = " ".join(pages).replace("*", "")
        for number in numbers(row["what"] + " " + row["result"]):
            assert number in text, f"{number} ({row['what']}) is not in {row['details']}"


def test_the_number_finder():
    assert numbers("0.505 → **0.916 ± 0.044**, +0.192 ± 0.011, -90.4") == [
        "0.505", "0.916", "0.044", "+0.192", "0.011", "-90.4",
    ]  # fmt: skip
    assert numbers("Acrobot-v1, LoRA r 8, distinct-3") == ["8", "3"]
