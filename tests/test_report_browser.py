"""The report page in a real browser (headless Chromium through Playwright): it runs without a
console error or a network request, its curves are drawn, the episode viewer shows the
environment's tokens in their own colour, and hovering a token shows its numbers.

Needs `pip install playwright` and a Chromium: the system's (`apt-get install chromium`, found on
PATH or at $TEXTRLHF_CHROMIUM) or Playwright's own (`playwright install chromium`). Skipped, with
the reason, when either is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import CONFIGS

from agents.run.config import load_config
from agents.run.trainer import train

CALC = [
    "total_timesteps=2304", "env.num_envs=16", "ppo.batch_size=384", "eval.episodes=8",
    "eval.every=768", "run.progress=false", "run.checkpoint_every=0",
]  # fmt: skip
ENV_COLOUR = "rgb(255, 208, 138)"  # WHO_COLOURS.env in agents/run/report.py
AGENT_COLOUR = "rgb(207, 227, 255)"


def chromium_path() -> str | None:
    """A Chromium executable: $TEXTRLHF_CHROMIUM, or one on PATH (None: Playwright's own)."""
    if os.environ.get("TEXTRLHF_CHROMIUM"):
        return os.environ["TEXTRLHF_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    executable = chromium_path()
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, args=args)
        except Exception as err:  # no browser binary: Playwright's error says which
            reason = f"no Chromium to run: {str(err).splitlines()[0]}"
            print(reason)
            pytest.skip(reason)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a short calc-tool run: the env writes the tool's results as tokens."""
    root = tmp_path_factory.mktemp("calc")
    run = train(load_config(CONFIGS / "text_calc_tool.yaml", [f"run.root={root}", *CALC]), "calc")
    return run / "report.html"


def test_the_report_renders_in_a_browser(browser, report):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri())
    page.wait_for_selector(".episode")

    assert errors == []
    assert [url for url in requests if url != report.as_uri()] == []  # nothing but the page

    # the curves: one chart per panel, each with its line(s) as SVG paths with points in them
    assert page.locator("svg.chart").count() >= 10
    ret = page.locator('svg.chart[data-title="return"] path.line')
    assert ret.count() == 2  # rollout/ep_return and eval/return
    assert all(
        d.count("L") >= 2 for d in ret.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
    )

    # the viewer: env-written tokens exist and have their own colour, unlike the agent's
    env = page.locator(".tok.env")
    assert env.count() > 0, "a logged episode in which the tiny tool model called the tool"
    background = "el => getComputedStyle(el).backgroundColor"
    assert env.first.evaluate(background) == ENV_COLOUR
    agent = page.locator(".tok.agent").first
    assert agent.evaluate(background) == AGENT_COLOUR
    assert env.first.inner_text().startswith("=")  # the calc tool writes "=RESULT"

    # hovering an agent token shows its id, text and log-prob (and, in a training rollout, its
    # advantage); an env token has no log-prob
    tip = page.locator("#tip")
    for episode, numbers in ((".episode.train", "advantage"), (".episode.eval", "value")):
        page.locator(f"{episode} .tok.agent").first.hover()
        assert tip.is_visible()
        text = tip.inner_text()
        assert "written by agent" in text and "log-prob" in text and numbers in text
    logprob = float(text.split("log-prob")[1].split()[0])
    assert -30 < logprob <= 0
    env.first.hover()
    assert "written by env" in tip.inner_text() and "log-prob" not in tip.inner_text()

    # colouring by log-prob changes the agent's tokens; filtering by tool use keeps tool users
    page.select_option("#colour", "logprob")
    assert agent.evaluate(background) != AGENT_COLOUR
    page.select_option("#tool", "yes")
    heads = page.locator(".episode .head").all_inner_texts()
    assert heads and not [h for h in heads if "tool calls 0" in h]
    page.select_option("#tool", "any")
    page.select_option("#split", "eval")
    page.select_option("#colour", "advantage")  # an evaluation has none: the page says so
    heads = page.locator(".episode .head").all_inner_texts()
    assert heads and all(h.startswith("held-out evaluation") for h in heads)
    assert "no advantage logged" in page.locator("#scale").inner_text()
    assert errors == []
    page.close()
