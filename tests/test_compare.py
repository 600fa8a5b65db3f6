"""`agents.run.compare.compare` smoke run: our PPO and SB3 on CartPole-v1, a tiny budget, one seed."""

from __future__ import annotations

import json
import re

from agents.run.compare import compare

# 700 is not a multiple of one iteration (8 envs x 32 steps = 256): both agents get 512
TINY = ["total_timesteps=700", "ppo.n_epochs=1", "eval.episodes=2", "run.progress=false"]


def test_compare_writes_table_plot_and_raw_results(cartpole_yaml, tmp_path, capsys):
    out = compare([str(cartpole_yaml)], 1, tmp_path / "cmp", TINY)
    assert out == tmp_path / "cmp"
    md = (out / "compare.md").read_text()
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert md.startswith("# Our PPO vs Stable-Baselines3 PPO")
    rows = {}
    for agent in ("ours", "sb3"):
        pattern = (
            rf"^\| CartPole-v1 \| {agent} \| 1 \| (-?[\d.]+) ± ([\d.]+) \| (-?[\d.]+) \| (.*?) \|"
        )
        match = re.search(pattern, md, flags=re.MULTILINE)
        assert match, f"no {agent} row in:\n{md}"
        rows[agent] = match
        assert float(match[2]) == 0.0  # one seed: no spread
        assert match[3] == match[1]  # one seed: the median is the mean
        assert match[4] == "not reached (0/1)"  # 512 steps cannot reach 475
    assert "Thresholds: CartPole-v1: 475.0" in md  # the env spec's reward threshold
    raw = json.loads((out / "compare.json").read_text())
    assert [(r["agent"], r["env_id"], r["seed"], r["steps"]) for r in raw] == [
        ("ours", "CartPole-v1", 1, 512),
        ("sb3", "CartPole-v1", 1, 512),
    ]
    for r in raw:
        assert 1.0 <= r["final_return"] <= 500.0 and r["steps_to_threshold"] is None
        assert float(rows[r["agent"]][1]) == round(r["final_return"], 1)
    finals = {r["agent"]: r["final_return"] for r in raw}
    gap = finals["ours"] - finals["sb3"]
    within = "within" if gap == 0 else "NOT within"  # one seed: SB3's std is 0
    verdict = f"- CartPole-v1: mean final return ours - sb3 = {gap:+.1f}, {within} one SB3"
    assert verdict in md and "standard deviation (0.0)" in md
    printed = capsys.readouterr().out
    assert "CartPole-v1 ours seed 1" in printed and "CartPole-v1 sb3  seed 1" in printed
