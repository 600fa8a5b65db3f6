"""trajectories.jsonl (agents/run/trajectories.py): which iterations and episodes are logged, that
each record is the episode token by token (prompt, agent, env-written tokens) with the rollout's
numbers on the agent's tokens, that a resume keeps only the lines up to its checkpoint, and that
the file has a size bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CONFIGS

from agents.run import logger as logger_module
from agents.run.config import load_config
from agents.run.logger import RunLogger
from agents.run.trainer import train
from agents.run.trajectories import AUTO_LOGGED_ITERATIONS, logs_iteration, spread

# 3 iterations of 16 rows of the calc-tool task (the tiny tool model calls the tool sometimes)
CALC = [
    "total_timesteps=2304", "env.num_envs=16", "ppo.batch_size=384", "eval.episodes=0",
    "run.progress=false", "run.checkpoint_every=0",
]  # fmt: skip


def test_which_iterations_are_logged():
    assert [i for i in range(1, 11) if logs_iteration(i, 10, 4)] == [1, 4, 8, 10]
    assert [i for i in range(1, 4) if logs_iteration(i, 3, 0)] == [1, 2, 3]
    auto = [i for i in range(1, 401) if logs_iteration(i, 400, 0)]  # every 8th of 400
    assert auto[:3] == [1, 8, 16] and auto[-1] == 400
    assert AUTO_LOGGED_ITERATIONS <= len(auto) <= AUTO_LOGGED_ITERATIONS + 2


def test_episodes_are_spread_over_their_ranks_by_return():
    returns = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2]
    assert spread(returns, 3) == [1, 3, 2]  # the lowest, the middle rank (round 2.5), the highest
    assert spread(returns, 2) == [1, 2]
    assert spread(returns, 10) == [1, 5, 3, 0, 4, 2]  # all, in ascending order
    assert spread([1.0, 1.0, 1.0], 2) == [0, 2]  # ties: index order
    assert spread([], 4) == [] and spread(returns, 0) == []


@pytest.fixture(scope="module")
def calc_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calc")
    evaluations = ["eval.episodes=8", "eval.every=1536"]  # at steps 0, 1536 and 2304
    cfg = load_config(CONFIGS / "text_calc_tool.yaml", [f"run.root={root}", *CALC, *evaluations])
    return train(cfg, name="calc")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]


def test_each_record_is_the_episode_token_by_token(calc_run):
    records = [r for r in _records(calc_run) if r["split"] == "train"]
    assert [r["iteration"] for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    assert [r["step"] for r in records] == [768] * 4 + [1536] * 4 + [2304] * 4
    assert [r["policy_version"] for r in records] == [r["iteration"] - 1 for r in records]
    per_token = ("token_text", "from_env", "logprobs", "ref_logprobs", "values", "advantages")
    for r in records:
        n, P = len(r["token_ids"]), r["prompt_length"]
        for key in (*per_token, "rewards"):
            assert len(r[key]) == n, key
        agent = [i for i in range(P, n) if not r["from_env"][i]]
        assert len(agent) == r["length"] and agent[-1] == n - 1  # the last token is the agent's
        assert r["from_env"][:P] == [0] * P
        for key in ("logprobs", "values", "advantages", "rewards"):
            numbers = [r[key][i] for i in agent]
            assert all(isinstance(x, float) for x in numbers), key
            assert all(r[key][i] is None for i in range(n) if i not in agent), key
        assert all(-30 < x <= 0 for x in (r["logprobs"][i] for i in agent))
        # the env's rewards on the agent's tokens sum to the episode's return
        assert sum(r["rewards"][i] for i in agent) == pytest.approx(r["return"], abs=1e-5)
        # the text: byte tokens, the prompt and response as the env reported them
        assert "".join(r["token_text"][:P]) == r["prompt"]
        assert "".join(r["token_text"][P:]).startswith(r["response"])
        assert r["token_text"][-1] == "</s>" or len(agent) == 48  # EOS, or the length limit
        assert r["info"]["reference"] and r["info"]["n_turns"] == 1
    # before the first update the policy is the reference: KL 0 up to rounding
    for r in records[:4]:
        for lp, ref in zip(r["logprobs"], r["ref_logprobs"]):
            assert (lp is None) == (ref is None)
            assert lp is None or abs(lp - ref) < 1e-4


def test_evaluations_log_held_out_episodes(calc_run):
    records = _records(calc_run)
    evals = [r for r in records if r["split"] == "eval"]
    # the initial evaluation, the one after iteration 2, the final one; 4 episodes each
    assert [(r["step"], r["iteration"], r["policy_version"]) for r in evals] == (
        [(0, 0, 0)] * 4 + [(1536, 2, 2)] * 4 + [(2304, 3, 3)] * 4
    )
    # in the file, each evaluation follows the training episodes of its iteration
    assert [r["split"] for r in records[:8]] == ["eval"] * 4 + ["train"] * 4
    for r in evals:
        n, P = len(r["token_ids"]), r["prompt_length"]
        agent = [i for i in range(P, n) if not r["from_env"][i]]
        assert len(agent) == r["length"] and r["ref_logprobs"] is None
        assert r["advantages"] is None  # an evaluation computes no advantages
        assert all(isinstance(r["logprobs"][i], float) for i in agent)
        assert sum(r["rewards"][i] for i in agent) == pytest.approx(r["return"], abs=1e-5)
        assert "".join(r["token_text"][:P]) == r["prompt"]
        assert r["info"]["reference"]
    # held-out prompts: the test split, not the training prompts
    train_prompts = {r["prompt"] for r in records if r["split"] == "train"}
    assert not train_prompts & {r["prompt"] for r in evals}


def test_env_written_tokens_are_marked_and_carry_no_numbers(calc_run):
    tool = [r for r in _records(calc_run) if r["info"]["used_tool"] == 1.0]
    assert tool, "the tiny tool model calls the calc tool in some logged episode"
    for r in tool:
        env = [i for i, e in enumerate(r["from_env"]) if e]
        written = "".join(r["token_text"][i] for i in env)
        assert written.startswith("=") and written[1:].lstrip("-").isdigit()  # "=RESULT"
        assert all(r["logprobs"][i] is None and r["rewards"][i] is None for i in env)
        assert "</calc>" + written in r["response"]


def test_runs_that_are_not_text_or_opt_out_write_none(finished, tmp_path):
    assert not (finished / "trajectories.jsonl").exists()  # CartPole
    cfg = load_config(
        CONFIGS / "text_calc_tool.yaml",
        [f"run.root={tmp_path}", *CALC, "total_timesteps=768", "run.trajectory_episodes=0"],
    )
    assert not (train(cfg, name="off") / "trajectories.jsonl").exists()


def test_a_resume_keeps_the_lines_up_to_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "token_ids": [1]}) + "\n" for s in (100, 200, 300)]
    (run / "trajectories.jsonl").write_text("".join(lines) + '{"step": 40', encoding="utf-8")
    RunLogger(run, 1000, start_step=200, progress=False).close()
    assert (run / "trajectories.jsonl").read_text() == "".join(lines[:2])


def test_the_file_stops_growing_at_its_bound(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(logger_module, "MAX_TRAJECTORY_BYTES", 100)
    log = RunLogger(tmp_path, 1000, progress=False)
    record = {"step": 1, "token_ids": list(range(10))}  # 57 bytes a line
    log.trajectories([record])
    log.trajectories([record])  # 114 bytes would pass the bound
    log.trajectories([record])
    log.close()
    assert (tmp_path / "trajectories.jsonl").read_text() == json.dumps(record) + "\n"
    assert capsys.readouterr().err.count("reached its bound") == 1
