"""`textrlhf eval` and the RLHF evaluation: the number of episodes, refusing a checkpoint of
another policy or env, no code run from a run folder, reproducing the logged final evaluation, a
YAML alias bomb in a run folder, the lengths of the gold/proxy evaluation (each test failed on the
code before its fix)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from helpers import _half_run, copy_run, train_args

from agents.cli import main
from agents.run import checkpoint as ckpt
from agents.run.config import load_config


def edit_config(run: Path, edit) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    edit(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config))


# ----------------------------------------------------------------------------- arguments


def test_eval_needs_at_least_one_episode(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    for episodes in ("0", "-3"):
        assert main(["eval", str(run), "--episodes", episodes]) == 1  # printed "nan ± nan"
        assert f"needs at least 1 episode, got {episodes} (--episodes)" in capsys.readouterr().err
    edit_config(run, lambda c: c["eval"].update(episodes=0))  # a run without evaluations
    assert main(["eval", str(run)]) == 1
    assert "got 0 (eval.episodes in the config); pass --episodes N" in capsys.readouterr().err
    assert main(["eval", str(run), "--episodes", str(2**40)]) == 1  # ran for ever
    assert f"at most {2**24} episodes, got {2**40} (--episodes)" in capsys.readouterr().err
    assert main(["eval", str(run), "--episodes", "2", "--samples", "-1"]) == 1
    assert "--samples must be >= 0" in capsys.readouterr().err
    assert main(["compare", "CartPole-v1", "--seeds", "0"]) == 1
    assert "--seeds must be in [1, 1000], got 0" in capsys.readouterr().err
    assert main(["compare", "CartPole-v1", "--seeds", str(10**9)]) == 1  # 10**9 runs queued
    assert f"--seeds must be in [1, 1000], got {10**9}" in capsys.readouterr().err
    assert main(["compare", "CartPole-v1", "--jobs", "1000000"]) == 1  # 1,000,000 processes
    assert "--jobs must be in [1, " in capsys.readouterr().err
    assert main(["compare", "CartPole-v1", "--threshold", "CartPole-v1=high"]) == 1
    assert "--threshold 'CartPole-v1=high' must look like ENV_ID=VALUE" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the right policy


def test_eval_refuses_a_checkpoint_trained_with_another_policy_or_env(
    finished, cartpole_yaml, tmp_path, capsys
):
    run = copy_run(finished, tmp_path)
    assert main(["eval", str(run)]) == 0
    capsys.readouterr()
    # an edited config.yaml: same tensor shapes, other activation -> a silently wrong return
    edit_config(run, lambda c: c["policy"].update(activation="relu"))
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert "policy.activation: 'tanh' in the checkpoint, 'relu' in the config" in err
    edit_config(run, lambda c: c["policy"].update(activation="tanh"))
    assert main(["eval", str(run), "--set", "env.kwargs={sutton_barto_reward: true}"]) == 1
    assert "env.kwargs: {} in the checkpoint" in capsys.readouterr().err
    # another run's checkpoint, of the same shapes
    other = ["policy.activation=relu", "--name", "relu"]
    assert main(train_args(cartpole_yaml, tmp_path, *other)) == 0
    relu_ckpt = ckpt.latest_checkpoint(tmp_path / "relu" / "checkpoints")
    assert main(["eval", str(run), "--checkpoint", str(relu_ckpt)]) == 1
    assert "was trained with another policy or env" in capsys.readouterr().err
    # what may change at eval time still may
    assert main(["eval", str(run), "--set", "eval.episodes=3", "run.torch_threads=1"]) == 0


def test_eval_reproduces_the_logged_final_eval_with_the_runs_settings(
    cartpole_yaml, tmp_path, capsys
):
    """Sampled actions (eval.deterministic false): `textrlhf eval RUN` with no flags uses the run's
    eval mode, seed and episodes, seeds torch, and prints the logged final eval. The run was
    resumed with these eval settings (it started with 2 deterministic episodes): config.yaml was
    written at step 0 only, so eval used the old settings and disagreed with the logged result."""
    run, _ = _half_run(cartpole_yaml, tmp_path)
    first = (run / "config.yaml").read_text()
    more = ["eval.deterministic=false", "eval.episodes=4"]
    assert main([*train_args(cartpole_yaml, tmp_path), *more, "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    means = []
    for _ in range(2):
        assert main(["eval", str(run)]) == 0
        out = capsys.readouterr().out
        means.append(float(re.search(r"over 4 episodes \(sampled\): (-?[\d.]+)", out)[1]))
    assert means[0] == means[1] == pytest.approx(summary["final_return"], abs=1e-4)
    # the settings of each logged evaluation: config.256.yaml up to step 256, then config.yaml
    assert (run / "config.256.yaml").read_text() == first
    assert yaml.safe_load(first)["eval"]["episodes"] == 2
    seed = 10_000 + load_config(cartpole_yaml).seed
    expected = {"step": 512, "episodes": 4, "deterministic": False, "seed": seed}
    assert {key: summary["final_eval"][key] for key in expected} == expected
    meta = json.loads(ckpt.latest_checkpoint(run / "checkpoints").read_text())
    assert meta["config"]["eval"] == yaml.safe_load((run / "config.yaml").read_text())["eval"]


# ----------------------------------------------------------------------------- shared run folders


def test_eval_runs_no_code_named_in_a_run_folder(cartpole_yaml, tmp_path, capsys):
    assert main([*train_args(cartpole_yaml, tmp_path), "--name", "shared"]) == 0
    run, marker = tmp_path / "shared", tmp_path / "pwned"
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"]["env_kwargs"] = {
        "reward_fn": {"name": "os:system", "command": f"touch {marker}"}
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert "eval.env_kwargs.reward_fn.name = 'os:system'" in err and "--trust-remote-code" in err
    assert not marker.exists()


def test_eval_imports_no_loose_module_named_by_a_run_folders_env_id(
    cartpole_yaml, tmp_path, capsys, monkeypatch
):
    """A shared run folder may ship a .py next to it and name it in env.id ('module:EnvId');
    importing it runs its code (e.g. when the folder is on sys.path, as the cwd is for
    `python -m`)."""
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "pwned"
    (code / "sweep_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(code))
    env_id = "env.id=sweep_payload:CartPole-v1"
    assert main([*train_args(cartpole_yaml, tmp_path, env_id), "--name", "shared"]) == 0
    marker.unlink()  # training imported it: the user passed that config
    monkeypatch.delitem(__import__("sys").modules, "sweep_payload")
    assert main(["eval", str(tmp_path / "shared")]) == 1
    err = capsys.readouterr().err
    assert "env.id = 'sweep_payload:CartPole-v1'" in err and "--trust-remote-code" in err
    assert not marker.exists()
    # an installed package's env module is fine, and so is trusting the folder
    assert main(["eval", str(tmp_path / "shared"), "--trust-remote-code"]) == 0
    assert marker.exists()


def test_eval_of_a_run_folder_with_a_yaml_alias_bomb_fails_fast(finished, tmp_path, capsys):
    """A 1.6 KB config.yaml took 52 s and 2 GB (10**9 values once the aliases expand)."""
    run = copy_run(finished, tmp_path)
    text = (run / "config.yaml").read_text()
    bomb = ['    a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    bomb += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    assert "  kwargs: {}\n" in text
    (run / "config.yaml").write_text(
        text.replace("  kwargs: {}\n", "  kwargs:\n" + "\n".join(bomb) + "\n", 1)
    )
    start = time.perf_counter()
    assert main(["eval", str(run)]) == 1
    assert time.perf_counter() - start < 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}" in err and "aliases expand to more than" in err


# ----------------------------------------------------------------------------- RLHF evaluation


def test_the_rlhf_evaluation_uses_the_runs_lengths():
    from agents.rlhf.preferences import env_lengths, evaluate_gold_proxy

    for name in ("text_reward_model.yaml", "text_reward_model_nokl.yaml"):
        cfg = load_config(Path(__file__).parents[1] / "configs" / name)
        assert env_lengths(cfg.env.kwargs) == {"max_prompt_tokens": 24, "max_new_tokens": 16}
    assert env_lengths({}) == {"max_prompt_tokens": 32, "max_new_tokens": 32}  # textenv's
    with pytest.raises(TypeError, match="max_new_tokens"):
        evaluate_gold_proxy(None, ["reverse: abc\n"])  # no silent default length
