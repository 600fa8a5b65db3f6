"""`agents.run.compare.compare` smoke run: our PPO and SB3 on CartPole-v1, a tiny budget, one seed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from helpers import DEEP

from agents.run.compare import SB3Adapter, compare, sb3_model
from agents.run.config import load_config
from agents.run.evaluation import evaluate_policy
from agents.run.trainer import Trainer

# 700 is not a multiple of one iteration (8 envs x 32 steps = 256): both agents get 512
TINY = ["total_timesteps=700", "ppo.n_epochs=1", "eval.episodes=2", "run.progress=false"]


def tiny_config(cartpole_yaml):
    return load_config(cartpole_yaml, [*TINY, "seed=1"])


def final_return_ours(cartpole_yaml) -> float:
    """Our Trainer's mean deterministic eval return after the tiny budget, run on its own."""
    trainer = Trainer(tiny_config(cartpole_yaml))
    assert trainer.learn(log=False)["steps"] == 512
    return float(np.mean(trainer.evaluate().returns))


def final_return_sb3(cartpole_yaml) -> float:
    """SB3's PPO with the same settings trained for the same 512 steps, on the same eval episodes
    as our agent (eval seed 10_000 + seed)."""
    from stable_baselines3.common.env_util import make_vec_env

    cfg = tiny_config(cartpole_yaml)
    model = sb3_model(cfg, make_vec_env(cfg.env.id, n_envs=cfg.env.num_envs, seed=cfg.seed))
    model.learn(512)
    assert model.num_timesteps == 512
    env = gym.make_vec(cfg.env.id, num_envs=2, vectorization_mode="vector_entry_point")
    log = evaluate_policy(SB3Adapter(model), env, 2, True, seed=10_000 + cfg.seed)
    env.close()
    return float(np.mean(log.returns))


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
        assert r["steps_to_threshold"] is None
        assert float(rows[r["agent"]][1]) == round(r["final_return"], 1)
    finals = {r["agent"]: r["final_return"] for r in raw}
    # the reported finals are the eval returns of the two agents trained alone on the same budget
    # (measured: ours 60.0, sb3 10.0)
    assert finals == {
        "ours": final_return_ours(cartpole_yaml),
        "sb3": final_return_sb3(cartpole_yaml),
    }
    gap = finals["ours"] - finals["sb3"]
    within = "within" if gap == 0 else "NOT within"  # one seed: SB3's std is 0
    verdict = f"- CartPole-v1: mean final return ours - sb3 = {gap:+.1f}, {within} one SB3"
    assert verdict in md and "standard deviation (0.0)" in md
    printed = capsys.readouterr().out
    assert "CartPole-v1 ours seed 1" in printed and "CartPole-v1 sb3  seed 1" in printed


def test_compare_our_configs_writes_seed_table_and_curves(gpt2_ctx64_path, tmp_path):
    """Two text configs (PPO with GAE, GRPO) x 2 seeds against each other, 2 runs at a time:
    a table per config and per seed, raw records that match the run folders, and a plot."""
    import yaml
    from helpers import text_config

    ppo = text_config(gpt2_ctx64_path, str(tmp_path))
    ppo.update(name="ppo_tiny", total_timesteps=128)
    ppo["eval"].update(every=64, episodes=4)
    grpo = {**ppo, "name": "grpo_tiny", "advantage": {"estimator": "grpo", "group_size": 4}}
    paths = []
    for cfg in (ppo, grpo):
        path = tmp_path / f"{cfg['name']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths.append(str(path))
    out = compare(paths, 2, tmp_path / "cmp", jobs=2, command="textrlhf compare ...")
    md = (out / "compare.md").read_text()
    assert "textrlhf compare ..." in md
    assert re.search(r"\| ppo_tiny \| 2 \| -?\d\.\d{3} ± \d\.\d{3} \|", md)
    assert re.search(r"\| grpo_tiny \| 2 \| -?\d\.\d{3} ± \d\.\d{3} \|", md)
    raw = json.loads((out / "compare.json").read_text())
    assert sorted((r["label"], r["seed"]) for r in raw) == [
        ("grpo_tiny", 3), ("grpo_tiny", 4), ("ppo_tiny", 3), ("ppo_tiny", 4)
    ]  # fmt: skip
    for r in raw:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert r["final_return"] == summary["final_return"]
        assert [c[2] for c in r["curve"]][0] == summary["initial_return"]
        assert len(r["curve"]) == 3  # step 0, 64 and the end (128)
        assert r["curve"][-1][1] == r["transitions"] > 0
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_config_report_lists_reward_components(tmp_path):
    """A run whose evaluations log several reward components (a learned proxy next to a weight-0
    gold reward) gets them read back from metrics.csv and tabulated, mean ± std over seeds."""
    from agents.run.compare import read_run, write_config_report

    runs = []
    for seed, (proxy, gold) in enumerate([(1.0, 0.5), (3.0, 0.7)]):
        run_dir = tmp_path / f"r{seed}"
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(json.dumps(
            {"initial_return": 0.1, "final_return": proxy, "wall_time_s": 1.0, "transitions": 8}
        ))  # fmt: skip
        (run_dir / "metrics.csv").write_text(
            "step,eval/return,eval/reward_components/reward_model,eval/reward_components/gold,"
            "time/elapsed,rollout/transitions\n"
            "0,0.1,0.1,0.2,0.0,\n"
            "8,,,,,8\n"
            f"8,{proxy},{proxy},{gold},1.0,\n"
        )
        runs.append(read_run(run_dir, "rm_ppo", seed))
    assert runs[1].components == {"reward_model": 3.0, "gold": 0.7}
    assert runs[1].start_components == {"reward_model": 0.1, "gold": 0.2}  # the step-0 row
    write_config_report(runs, tmp_path / "out")
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| config | gold | reward_model |" in md
    assert "| rm_ppo | 0.600 ± 0.100 | 2.000 ± 1.000 |" in md
    # start (the SFT level), final and the per-seed gain: gold 0.2 -> 0.5 and 0.2 -> 0.7
    assert "| rm_ppo | gold | 2 | 0.200 ± 0.000 | 0.600 ± 0.100 | 0.400 ± 0.100 |" in md
    raw = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert raw[0]["start_components"] == {"reward_model": 0.1, "gold": 0.2}


def test_config_report_without_a_start_evaluation_has_no_start_table(tmp_path):
    """A run that evaluated only at the end has no start components and no gain table."""
    from agents.run.compare import read_run, write_config_report

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(
        json.dumps({"final_return": 1.0, "wall_time_s": 1.0, "transitions": 8})
    )
    (run_dir / "metrics.csv").write_text(
        "step,eval/return,eval/reward_components/reward_model,eval/reward_components/gold,"
        "time/elapsed,rollout/transitions\n"
        "8,,,,,8\n"
        "8,1.0,1.0,0.5,1.0,\n"
    )
    run = read_run(run_dir, "rm_ppo", 1)
    assert run.start_components == {} and run.components == {"reward_model": 1.0, "gold": 0.5}
    write_config_report([run], tmp_path / "out")
    assert (
        "| config | component | seeds | start | final | gain |"
        not in (tmp_path / "out" / "compare.md").read_text()
    )


# ----------------------------------------------------------------------------- failures, re-runs


def write_config(path: Path, cartpole_yaml: Path, **changes) -> str:
    """configs/cartpole.yaml with top-level sections or keys replaced, saved as `path`."""
    import yaml

    data = yaml.safe_load(Path(cartpole_yaml).read_text())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_compare_goes_on_after_a_failed_run_and_a_rerun_reuses_the_finished_ones(
    cartpole_yaml, tmp_path, capsys
):
    """A config that fails (its env rejects a keyword) stopped the comparison: with --jobs 1
    the configs after it never ran and no report was written; a re-run retrained (and deleted)
    every finished run. Now the others run, the report marks the failed run with its error,
    the exit code is 1 and names it, and the same command again reuses the finished run."""
    from agents.cli import main

    good = write_config(tmp_path / "good.yaml", cartpole_yaml, name="good")
    bad = write_config(tmp_path / "bad.yaml", cartpole_yaml, name="bad", env={"kwargs": {"x": 1}})
    out = tmp_path / "cmp"
    args = ["compare", bad, good, "--no-sb3", "--seeds", "1", "--out", str(out), "--set", *TINY]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "textrlhf compare: error: 1 of 2 runs failed: bad ours seed 1 (TypeError: " in err
    md = (out / "compare.md").read_text()
    assert "**1 of 2 runs failed**" in md
    assert re.search(r"^\| good \| 1 \| -?[\d.]+ ± 0\.000 \|", md, flags=re.MULTILINE), md
    assert re.search(r"^\| bad \| 0 \(1 failed\) \| failed \| n/a \|", md, flags=re.MULTILINE)
    assert re.search(r"^\| bad \| 1 \| n/a \| failed: TypeError: .*'x'.* \|", md, re.MULTILINE)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["label"] for r in json.loads((out / "compare.json").read_text())] == ["good"]
    finished = out / "runs" / "good_s1"
    summary = (finished / "summary.json").read_text()
    (finished / "notes.txt").write_text("a file the user put there")

    write_config(tmp_path / "bad.yaml", cartpole_yaml, name="bad")  # fixed
    assert main(args) == 0
    assert "good seed 1: reusing the finished run" in capsys.readouterr().out
    assert (finished / "summary.json").read_text() == summary  # not trained again
    assert (finished / "notes.txt").is_file()  # nor deleted
    md = (out / "compare.md").read_text()
    assert "runs failed" not in md and re.search(r"^\| bad \| 1 \| ", md, flags=re.MULTILINE)


def test_a_compare_rerun_resumes_an_unfinished_run_and_keeps_a_finished_one_of_another_config(
    cartpole_yaml, tmp_path
):
    """An unfinished run (stopped with a checkpoint) is resumed, not started again; a finished
    run of another config is refused and left as it is (a re-run deleted both)."""
    from agents.run.compare import CompareFailed, compare_configs
    from agents.run.rundir import new_run_dir

    source = write_config(tmp_path / "pole.yaml", cartpole_yaml, name="pole")
    out = tmp_path / "cmp"
    cfg = load_config(source, [*TINY, "seed=1", f"run.root={out / 'runs'}"])
    Trainer(cfg, new_run_dir(cfg, "pole_s1")).learn(stop_at=256)
    run = out / "runs" / "pole_s1"
    (run / "notes.txt").write_text("a file the user put there")
    compare_configs([source], 1, out, TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 512
    assert (run / "notes.txt").is_file() and (run / "checkpoints" / "256.json").is_file()

    with pytest.raises(CompareFailed) as caught:
        compare_configs([source], 1, out, [*TINY, "ppo.n_epochs=2"])
    assert f"{run} holds a finished run of another config (ppo.n_epochs: 1 there, 2 now)" in str(
        caught.value
    )
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (run / "notes.txt").is_file()
    # run.dtype: a float32 run is reused under auto (a resume under auto keeps the recorded
    # dtype), not under an explicit other dtype
    compare_configs([source], 1, out, [*TINY, "run.dtype=float32"])
    compare_configs([source], 1, out, [*TINY, "run.dtype=auto"])
    assert json.loads((run / "summary.json").read_text()) == summary
    with pytest.raises(CompareFailed, match=r"run.dtype: 'float32' there, 'bfloat16' now"):
        compare_configs([source], 1, out, [*TINY, "run.dtype=bfloat16"])


def test_compare_with_sb3_keeps_the_finished_results_when_one_fails(cartpole_yaml, tmp_path):
    """Ours vs SB3: a failed run lost every finished result (nothing was written). Now the
    report has them and the failed ones; each finished result is kept, and reused by a re-run
    with the same --out."""
    from agents.run.compare import CompareFailed

    bad = write_config(
        tmp_path / "bad.yaml", cartpole_yaml, env={"id": "Acrobot-v1", "kwargs": {"x": 1}}
    )
    out = tmp_path / "cmp"
    with pytest.raises(CompareFailed) as caught:
        compare([bad, str(cartpole_yaml)], 1, out, TINY)
    assert [(f.label, f.agent) for f in caught.value.failed] == [
        ("Acrobot-v1", "ours"), ("Acrobot-v1", "sb3")
    ]  # fmt: skip
    assert "2 of 4 runs failed: Acrobot-v1 ours seed 1 (TypeError: " in str(caught.value)
    md = (out / "compare.md").read_text()
    assert re.search(r"^\| Acrobot-v1 \| sb3 \| 0 \(1 failed\) \| failed: TypeError", md, re.M)
    assert re.search(r"^\| CartPole-v1 \| sb3 \| 1 \| ", md, flags=re.MULTILINE), md
    assert "- Acrobot-v1 ours seed 1: TypeError: " in md
    raw = json.loads((out / "compare.json").read_text())
    assert [(r["agent"], r["env_id"]) for r in raw] == [
        ("ours", "CartPole-v1"),
        ("sb3", "CartPole-v1"),
    ]
    assert len(list((out / "results").glob("CartPole-v1_*.json"))) == 2

    compare([str(cartpole_yaml)], 1, out, TINY)  # every result reused: the same numbers
    again = json.loads((out / "compare.json").read_text())
    assert [(r["agent"], r["final_return"], r["wall_time"]) for r in again] == [
        (r["agent"], r["final_return"], r["wall_time"]) for r in raw
    ]


def test_a_run_whose_process_dies_fails_alone(cartpole_yaml, tmp_path):
    """With --jobs 2, a run whose worker process dies (here at its env's first reset) broke the
    process pool and so failed every run in it; each of those runs gets a process of its own."""
    from agents.run.compare import CompareFailed, compare_configs

    crash = write_config(
        tmp_path / "crash.yaml", cartpole_yaml, name="crash",
        env={"id": "crashing_env:CrashOnReset-v0", "vectorization": "sync"},
    )  # fmt: skip
    good = write_config(tmp_path / "good.yaml", cartpole_yaml, name="good")
    with pytest.raises(CompareFailed) as caught:
        compare_configs([crash, good], 1, tmp_path / "cmp", TINY, jobs=2)
    assert [(f.label, f.error.split(":")[0]) for f in caught.value.failed] == [
        ("crash", "BrokenProcessPool")
    ]
    raw = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["label"] for r in raw] == ["good"]


def test_compare_reading_a_deeply_nested_summary_names_it(tmp_path):
    """compare reads the summaries of the run folders it reuses; was a RecursionError."""
    from agents.run.compare import read_run

    (tmp_path / "summary.json").write_text(DEEP)
    with pytest.raises(ValueError, match=r"summary\.json cannot be read: JSON nested more than"):
        read_run(tmp_path, "x", 1)
