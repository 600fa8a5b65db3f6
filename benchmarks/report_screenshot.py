"""The screenshot of docs/report.md: the episode viewer of a short calc-tool run (the tiny tool
model, env-written tool results in their own colour), taken in headless Chromium.

    python benchmarks/report_screenshot.py [--out docs/images/report_viewer.png]

Needs `pip install playwright` and a Chromium (`apt-get install chromium`), as the browser test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from agents.run.config import load_config
from agents.run.trainer import train

REPO = Path(__file__).resolve().parents[1]
SHORT = ["total_timesteps=6144", "env.num_envs=32", "ppo.batch_size=768", "eval.episodes=16",
         "eval.every=3072", "run.progress=false", "run.checkpoint_every=0"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/images/report_viewer.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as root:
        cfg = load_config(REPO / "configs/text_calc_tool.yaml", [f"run.root={root}", *SHORT])
        report = train(cfg, "calc") / "report.html"
        no_sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), args=no_sandbox
            )
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(report.as_uri())
            page.wait_for_selector(".episode")
            page.select_option("#tool", "yes")  # episodes that called the tool
            page.locator(".episode .tok.agent").first.hover()
            viewer = page.locator(".episode").first
            viewer.scroll_into_view_if_needed()
            page.screenshot(path=str(args.out), full_page=False)
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
