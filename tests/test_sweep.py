"""Siblings of the faults in tests/test_run_hardening.py: the same classes elsewhere (a run that
goes silently wrong, lost data, code run from a file, unclear errors). Each test failed on the
code before its fix."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from agents.cli import main
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.rundir import new_run_dir
from agents.run.trainer import Trainer

SMALL = ["total_timesteps=512", "ppo.n_epochs=2", "run.progress=false", "eval.episodes=2"]


def train_args(cartpole_yaml: Path, root: Path, *more: str) -> list[str]:
    return ["train", str(cartpole_yaml), "--set", f"run.root={root}", *SMALL, *more]


@pytest.fixture(scope="module")
def finished(cartpole_yaml_path, tmp_path_factory) -> Path:
    """A finished 512-step CartPole run (tests copy it before changing it)."""
    root = tmp_path_factory.mktemp("finished")
    assert main([*train_args(cartpole_yaml_path, root), "--name", "run"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def cartpole_yaml_path() -> Path:
    return Path(__file__).resolve().parents[1] / "configs" / "cartpole.yaml"


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def edit_config(run: Path, edit) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    edit(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config))


# ----------------------------------------------------------------------------- configs


def test_a_config_that_is_not_yaml_names_the_file_or_the_override(cartpole_yaml, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: {n_steps: [32\n")
    assert main(["train", str(bad)]) == 1  # was a yaml.ParserError traceback
    err = capsys.readouterr().err
    assert f"config file '{bad}' is not valid YAML (line 2" in err
    assert main(["train", str(cartpole_yaml), "--set", "ppo.n_steps=[1"]) == 1
    assert "override 'ppo.n_steps=[1' is not valid YAML" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: caf\xe9\n")
    assert main(["train", str(latin1)]) == 1  # the decode error did not name the file
    assert f"config file '{latin1}' is not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".", ".."])
def test_the_config_name_keeps_the_run_folder_under_the_root(cartpole_yaml, tmp_path, capsys, name):
    root = tmp_path / "a" / "runs"
    assert main(train_args(cartpole_yaml, root, f"name={name}")) == 1
    assert "config key 'name'" in capsys.readouterr().err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == []


def test_a_run_root_that_is_a_file_is_named(cartpole_yaml, tmp_path, capsys):
    root = tmp_path / "runs"
    root.write_text("not a folder")
    assert main(train_args(cartpole_yaml, root)) == 1  # was "[Errno 17] File exists"
    assert f"run.root '{root}' is a file, not a folder" in capsys.readouterr().err
    assert root.read_text() == "not a folder"


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_deletes_only_a_run_folder(cartpole_yaml, tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "thesis").mkdir(parents=True)
    (root / "thesis" / "chapter1.tex").write_text("two years of work")
    (root / "notes.txt").write_text("keep")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "data.csv").write_text("keep")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    (root / "rm_tiny").mkdir()  # a reward model (`textrlhf rm` also locks its output folder)
    for file in (".lock", "config.json", "model.safetensors"):
        (root / "rm_tiny" / file).write_text("")
    for name in ("thesis", "notes.txt", "link", "rm_tiny"):
        assert main([*train_args(cartpole_yaml, root), "--name", name, "--overwrite"]) == 1
        assert f"--overwrite refuses to delete {root / name}" in capsys.readouterr().err
    assert (root / "thesis" / "chapter1.tex").read_text() == "two years of work"
    assert (root / "notes.txt").read_text() == "keep"
    assert os.listdir(tmp_path / "elsewhere") == ["data.csv"]  # not even a .lock written there
    assert sorted(os.listdir(root / "rm_tiny")) == [".lock", "config.json", "model.safetensors"]
    # a run folder, and an empty folder, are still replaced
    (root / "empty").mkdir()
    for name in ("run", "run", "empty"):
        assert main([*train_args(cartpole_yaml, root), "--name", name, "--overwrite"]) == 0
    assert (root / "run" / "summary.json").is_file()
    assert (root / "empty" / "summary.json").is_file()


# ----------------------------------------------------------------------------- eval


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


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ({"checkpoint": "../../other/checkpoints/512.json"}, "must be the name of a"),
        ({"checkpoint": "/etc/passwd"}, "must be the name of a"),
        ({"checkpoint": 3}, "'checkpoint' = 3 must be"),
        (["512.json"], "'checkpoint' = None must be"),
    ],
)
def test_the_latest_pointer_names_a_checkpoint_of_its_own_folder(
    finished, tmp_path, capsys, pointer, message
):
    run = copy_run(finished, tmp_path)
    copy_run(finished, tmp_path, "other")  # ../../other/checkpoints/512.json exists
    (run / "checkpoints" / "latest.json").write_text(json.dumps(pointer))
    assert main(["eval", str(run)]) == 1  # read another run's checkpoint, or a raw TypeError
    err = capsys.readouterr().err
    assert "checkpoint pointer" in err and "is corrupted" in err and message in err


@pytest.mark.parametrize(("key", "value"), [("weights_file", 5), ("weights_sha256", None)])
def test_checkpoint_metadata_of_the_wrong_type_is_named(finished, tmp_path, capsys, key, value):
    run = copy_run(finished, tmp_path)
    path = ckpt.latest_checkpoint(run / "checkpoints")
    meta = json.loads(path.read_text())
    meta[key] = value
    path.write_text(json.dumps(meta))
    assert main(["eval", str(run)]) == 1  # was "expected str, bytes or os.PathLike object, ..."
    assert f"{path} is corrupted: {key} = {value!r} must be a string" in capsys.readouterr().err


# ----------------------------------------------------------------------------- logs


def test_resume_after_a_crash_in_the_middle_of_a_log_line(cartpole_yaml, tmp_path):
    """The logs are appended during the run; a crash can cut their last line short. Resume drops
    what was logged after the checkpoint, and so that line too (it failed, or kept a bogus row)."""
    cfg = load_config(cartpole_yaml, [f"run.root={tmp_path}", *SMALL])
    Trainer(cfg, new_run_dir(cfg, "crashed")).learn(stop_at=256)
    run = tmp_path / "crashed"
    with open(run / "samples.jsonl", "a") as f:
        f.write('{"step": 256, "prompt": "a", "response": "b"}\n{"step": 512, "prom')
    with open(run / "metrics.csv", "a") as f:
        f.write("5")  # the start of the row of step 512
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 0
    with open(run / "metrics.csv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["256", "512", "512"]
    lines = (run / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [256]


# ----------------------------------------------------------------------------- sizes, stages


def test_a_rollout_larger_than_the_machines_memory_is_a_config_error(
    cartpole_yaml, tmp_path, capsys, monkeypatch
):
    """torch's allocation error was a raw RuntimeError naming no setting (or the OS killed the
    process); the size is checked before the buffer is allocated."""
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1024}  # a 4 MiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    big = ["env.num_envs=4096", "total_timesteps=131072", "--name", "big"]
    assert main(train_args(cartpole_yaml, tmp_path, *big)) == 1
    err = capsys.readouterr().err
    assert "ppo.n_steps * env.num_envs = 32 * 4096 = 131,072 transitions" in err
    assert "lower env.num_envs or ppo.n_steps" in err and not (tmp_path / "big").exists()


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_stage_output_dir_that_is_a_file_is_named(tmp_path, capsys, stage):
    configs = Path(__file__).resolve().parents[1] / "configs"
    out = tmp_path / "model"
    out.write_text("not a folder")
    config = configs / f"{stage}_tiny.yaml"
    assert main([stage, str(config), "--set", f"output_dir={out}"]) == 1  # "[Errno 17] ..."
    assert f"output_dir '{out}' is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_a_seed_numpy_cannot_take_names_the_setting(finished, cartpole_yaml, tmp_path, capsys):
    for seed in ("-1", str(2**32)):  # was "Seed must be between 0 and 2**32 - 1", no key
        assert main(train_args(cartpole_yaml, tmp_path, f"seed={seed}")) == 1
        assert f"config key 'seed' = {seed}: Input should be" in capsys.readouterr().err
    run = copy_run(finished, tmp_path)
    assert main(["eval", str(run), "--seed", "-5"]) == 1  # was a gymnasium.error.Error traceback
    assert "--seed must be in [0, 2**32 - 1], got -5" in capsys.readouterr().err


# ----------------------------------------------------------------------------- run-folder parsers

DEEP = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit in json and yaml
NESTED = "[" * 101 + "]" * 101  # parses, but deeper than any file of a run holds


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


@pytest.mark.parametrize(
    "target, text",
    [
        ("config.yaml", "env:\n  kwargs:\n    x: " + DEEP + "\n"),
        ("config.yaml", "env:\n  kwargs:\n    x: " + NESTED + "\n"),
        ("config.yaml", "# emptied\n"),
        ("config.yaml", "seed: 1\nseed: 2\n"),
        ("checkpoints/latest.json", DEEP),
        ("step", '{"format_version": ' + DEEP + "}"),
        ("step", "400 levels in its config"),
    ],
    ids=["config-deep", "config-nested", "config-empty", "config-dup", "latest-deep",
         "step-deep", "step-config-nested"],
)  # fmt: skip
def test_a_damaged_run_folder_file_is_an_error_naming_it(finished, tmp_path, capsys, target, text):
    """Was a RecursionError traceback (deep; a checkpoint whose recorded config nests 400 levels:
    json reads it, the config comparison recursed), or read silently (empty, duplicate keys)."""
    run = copy_run(finished, tmp_path)
    path = ckpt.latest_checkpoint(run / "checkpoints") if target == "step" else run / target
    if text == "400 levels in its config":
        meta = json.loads(path.read_text())
        meta["config"]["env"]["kwargs"] = {"x": json.loads("[" * 400 + "]" * 400)}
        text = json.dumps(meta)
    path.write_text(text)
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and ("nested" in err or "empty" in err or "duplicate" in err), err


def test_resuming_a_finished_run_with_a_damaged_summary_names_it(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "summary.json").write_text(DEEP)
    args = ["train", str(run / "config.yaml"), "--resume", str(run)]
    assert main(args) == 1  # was a RecursionError traceback
    err = capsys.readouterr().err
    assert str(run / "summary.json") in err and "nested" in err


def test_compare_reading_a_deeply_nested_summary_names_it(tmp_path):
    """compare reads the summaries of the run folders it reuses; was a RecursionError."""
    from agents.run.compare import read_run

    (tmp_path / "summary.json").write_text(DEEP)
    with pytest.raises(ValueError, match=r"summary\.json cannot be read: JSON nested more than"):
        read_run(tmp_path, "x", 1)
