"""Configs: every shipped YAML config validates against today's schema (a typo or a renamed field
in configs/ would otherwise surface only when a user runs it); config files are read strictly
(not YAML, duplicate keys, alias bombs, nesting, size); relative paths; the bounds on sizes,
devices and seeds."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, copy_run, train_args

from agents.cli import main
from agents.rlhf.reward_model import load_config as load_rm_config
from agents.rlhf.sft import load_config as load_sft_config
from agents.run.config import MAX_NESTING, MAX_YAML_BYTES, _parse_yaml, load_config, save_config

LOADERS = {"sft_": load_sft_config, "rm_": load_rm_config}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_config_loads(path):
    loader = next((f for prefix, f in LOADERS.items() if path.stem.startswith(prefix)), load_config)
    cfg = loader(path)
    assert cfg.name == path.stem


def test_critic_free_configs_build_no_critic():
    for path in sorted(CONFIGS.glob("*_grpo.yaml")) + sorted(CONFIGS.glob("*_rloo.yaml")):
        cfg = load_config(path)
        assert cfg.advantage.estimator in ("grpo", "rloo"), path
        assert cfg.policy.critic == "none", path
        assert cfg.env.num_envs % cfg.advantage.group_size == 0, path


# ----------------------------------------------------------------------------- reading YAML


def write(folder: Path, text: str, name: str = "c.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_duplicate_key_is_refused_at_any_depth_naming_both_lines(tmp_path):
    top = write(tmp_path, "seed: 2\nppo:\n  n_epochs: 4\n  gamma: 0.9\nppo:\n  n_epochs: 8\n")
    with pytest.raises(
        ValueError, match=r"c\.yaml.*duplicate key 'ppo': first at line 2, again at line 5"
    ):
        load_config(top)
    nested = write(tmp_path, "ppo:\n  n_epochs: 4\n  gamma: 0.9\n  n_epochs: 8\n")
    with pytest.raises(
        ValueError, match=r"duplicate key 'n_epochs': first at line 2, again at line 4"
    ):
        load_config(nested)
    flow = write(tmp_path, "env:\n  kwargs: {reward_fn: {name: length, name: gold}}\n")
    with pytest.raises(ValueError, match=r"duplicate key 'name': first at line 2, again at line 2"):
        load_config(flow)
    with pytest.raises(
        ValueError, match=r"override 'env.kwargs=\{a: 1, a: 2\}'.*duplicate key 'a'"
    ):
        load_config(None, ["env.kwargs={a: 1, a: 2}"])
    for loader in LOADERS.values():  # the RLHF stages read YAML the same way
        with pytest.raises(ValueError, match="duplicate key 'seed'"):
            loader(write(tmp_path, "seed: 1\nseed: 2\n"))
    # a merge key is not a duplicate: the explicit key overrides the merged one, as YAML says
    assert _parse_yaml("a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\n", "t") == {
        "a": {"k": 1, "j": 2},
        "b": {"k": 3, "j": 2},
    }


def billion_laughs(levels: int = 9) -> str:
    """A YAML alias bomb under env.kwargs: ~1 KB of text, 10**levels values once expanded."""
    lines = ["env:", "  kwargs:", '    a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", '
             '"lol", "lol", "lol"]']  # fmt: skip
    for i in range(1, levels + 1):
        lines.append(f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_fails_fast_naming_the_file(tmp_path):
    path = write(tmp_path, billion_laughs(), "config.yaml")
    assert path.stat().st_size < 2000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"config\.yaml.*aliases expand to more than"):
        load_config(path)
    assert time.perf_counter() - start < 2
    # a few shared anchors are fine
    ok = write(tmp_path, "env:\n  kwargs: {a: &a [1, 2], b: *a, c: *a}\n")
    assert load_config(ok).env.kwargs == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}


def test_a_recursive_yaml_alias_is_refused(tmp_path):
    path = write(tmp_path, "env:\n  kwargs: &k {self: *k}\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*recursive"):
        load_config(path)


def test_a_config_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_YAML_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ValueError, match=r"big\.yaml.*larger than"):
        load_config(path)


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 100_000])
def test_deeply_nested_yaml_is_an_error_naming_the_file(tmp_path, depth):
    path = write(tmp_path, "env:\n  kwargs:\n    x: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*nested"):
        load_config(path)
    with pytest.raises(ValueError, match=r"override 'env\.kwargs\.x=\[\[.*nested"):
        load_config(None, ["env.kwargs.x=" + "[" * depth + "]" * depth])


def test_a_lone_surrogate_in_a_yaml_string_names_the_file_and_line(tmp_path):
    path = write(tmp_path, 'seed: 1\nname: "run\\ud800"\n')
    with pytest.raises(ValueError, match=r"c\.yaml.*line 2.*surrogate"):
        load_config(path)


@pytest.mark.parametrize("text", ["", "  \n\n", "# only a comment\n", "---\n", "\n# a\n  # b\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=r"c\.yaml.* is empty"):
        load_config(path)
    with pytest.raises(ValueError, match=r"c\.yaml.* is empty"):
        LOADERS["sft_"](path)
    assert load_config(write(tmp_path, "{}\n")).env.id == "CartPole-v1"  # explicit defaults


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


# ----------------------------------------------------------------------------- paths


def test_relative_paths_in_a_config_file_resolve_against_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    for name in ("text_calc_tool.yaml", "text_retry.yaml"):
        model = Path(load_config(CONFIGS / name).policy.model_path)
        assert model.is_absolute() and (model / "config.json").is_file(), name
    rm = load_rm_config(CONFIGS / "rm_tiny.yaml")
    assert Path(rm.train_file).is_file() and Path(rm.eval_file).is_file()

    folder = tmp_path / "exp"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "p.jsonl").write_text('{"prompt": "a"}\n')
    (folder / "rm").mkdir()
    path = write(
        folder,
        "env:\n  id: TextRLHF-v0\n  kwargs:\n    prompts: data/p.jsonl\n    tokenizer: byte\n"
        "    reward_fn: {weighted_sum: [{name: reward_model, path: rm, weight: 1.0}]}\n"
        "eval:\n  env_kwargs: {prompts: reverse}\n"
        "policy: {type: lm, model_path: model, critic: separate, critic_path: /abs/critic,"
        " lora: {adapter_path: adapter}}\n",
    )
    cfg = load_config(path, ["policy.model_path=mine"])
    kwargs = cfg.env.kwargs
    assert kwargs["prompts"] == str(folder / "data" / "p.jsonl")
    assert kwargs["reward_fn"]["weighted_sum"][0]["path"] == str(folder / "rm")
    assert kwargs["tokenizer"] == "byte" and cfg.eval.env_kwargs["prompts"] == "reverse"
    assert cfg.policy.lora.adapter_path == str(folder / "adapter")  # found nowhere: the rule
    assert cfg.policy.critic_path == "/abs/critic"
    assert cfg.policy.model_path == str(tmp_path / "mine")  # --set: the working directory's
    # the run folder's copy holds absolute paths: still valid from anywhere
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    monkeypatch.chdir(run)
    assert load_config(run / "config.yaml") == cfg


def test_a_path_found_only_in_the_working_directory_is_taken_from_there(tmp_path, monkeypatch):
    """Configs written for the repository root, and run folders saved with relative paths."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a"}\n')
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", "env:\n  kwargs: {prompts: prompts.jsonl}\n")
    assert load_config(path).env.kwargs["prompts"] == str(tmp_path / "prompts.jsonl")


# ----------------------------------------------------------------------------- numeric bounds

BIG = "1" + "0" * 30


@pytest.mark.parametrize(
    "config, override",
    [
        ("cartpole", "run.allreduce_bucket_mb=1.0e308"),  # was an OverflowError
        ("cartpole", "run.torch_threads=1000000"),  # was a segfault
        ("cartpole", f"env.num_envs={BIG}"),
        ("cartpole", f"ppo.n_steps={BIG}"),
        ("cartpole", f"total_timesteps={BIG}"),
        ("cartpole", f"eval.episodes={BIG}"),
        ("cartpole", f"eval.every={BIG}"),
        ("cartpole", f"run.checkpoint_every={BIG}"),
        ("cartpole", f"kl.horizon={BIG}"),
        ("cartpole", f"policy.hidden_sizes=[{BIG}]"),
        ("cartpole", "policy.log_std_init=1.0e300"),  # exp() of it is inf in float32
        ("text_edit_distance_lora", "policy.lora.r=1000000000"),
        ("text_edit_distance_lora", "policy.lora.alpha=1.0e300"),
    ],
)
def test_every_number_that_sizes_a_resource_has_an_upper_bound(config, override):
    key, value = override.split("=")
    with pytest.raises(ValueError, match=rf"{re.escape(key)}.*(less than or equal|\[)"):
        load_config(CONFIGS / f"{config}.yaml", [override])


@pytest.mark.parametrize(
    "loader, override",
    [
        ("sft_", "torch_threads=1000000"),
        ("sft_", f"n_per_task={BIG}"),
        ("sft_", f"model.n_embd={BIG}"),
        ("sft_", f"model.n_positions={BIG}"),
        ("sft_", f"train.batch_size={BIG}"),
        ("sft_", f"eval.n={BIG}"),
        ("rm_", "torch_threads=1000000"),
        ("rm_", f"train.batch_size={BIG}"),
        ("rm_", f"train.steps={BIG}"),
        ("rm_", f"cut_at_tokens={BIG}"),
    ],
)
def test_the_stage_configs_bound_their_sizes_too(loader, override):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=rf"{re.escape(key)}.*(less than or equal|\[)"):
        LOADERS[loader](CONFIGS / f"{loader}tiny.yaml", [override])


def test_torch_threads_is_bounded_by_the_machine(cartpole_yaml):
    most = 4 * (os.cpu_count() or 1)
    with pytest.raises(ValueError, match=rf"run.torch_threads' = 1000000: .*\[1, {most}\]"):
        load_config(cartpole_yaml, ["run.torch_threads=1000000"])
    assert load_config(cartpole_yaml, [f"run.torch_threads={most}"]).run.torch_threads == most


# ----------------------------------------------------------------------------- devices, seeds


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_a_config_error(cartpole_yaml):
    with pytest.raises(ValueError, match="'cuda' needs CUDA"):
        load_config(cartpole_yaml, ["run.device=cuda"])
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        load_config(cartpole_yaml, ["run.device=gpu0"])


@pytest.mark.parametrize("device", ["mps", "meta", "xla", "cpu:0", "cuda:x", "cuda:-1", "CPU"])
def test_a_device_kind_the_project_does_not_run_on_is_a_config_error(cartpole_yaml, device):
    with pytest.raises(
        ValueError, match=rf"run.device' = '{re.escape(device)}'.*allowed: 'auto', 'cpu', 'cuda'"
    ):
        load_config(cartpole_yaml, [f"run.device={device}"])
    assert load_config(cartpole_yaml, ["run.device=cpu"]).run.device == "cpu"


def test_a_seed_numpy_cannot_take_names_the_setting(finished, cartpole_yaml, tmp_path, capsys):
    for seed in ("-1", str(2**32)):  # was "Seed must be between 0 and 2**32 - 1", no key
        assert main(train_args(cartpole_yaml, tmp_path, f"seed={seed}")) == 1
        assert f"config key 'seed' = {seed}: Input should be" in capsys.readouterr().err
    run = copy_run(finished, tmp_path)
    assert main(["eval", str(run), "--seed", "-5"]) == 1  # was a gymnasium.error.Error traceback
    assert "--seed must be in [0, 2**32 - 1], got -5" in capsys.readouterr().err
