"""The run harness never loses data silently, runs no code from a run folder, and names what is
wrong (each test failed on the code before its fix)."""

from __future__ import annotations

import errno
import json
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import text_config
from safetensors.torch import load_file, save_file

from agents.cli import main
from agents.core.kl import AdaptiveKLController
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.rundir import RunLock, new_run_dir
from agents.run.trainer import Trainer

SMALL = ["total_timesteps=512", "ppo.n_epochs=2", "run.progress=false", "eval.episodes=2"]


def train_args(cartpole_yaml: Path, root: Path, *more: str) -> list[str]:
    return ["train", str(cartpole_yaml), "--set", f"run.root={root}", *SMALL, *more]


def test_adaptive_kl_beta_stays_positive_with_more_episodes_than_the_horizon():
    controller = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10)
    controller.update(kl=0.0, n_episodes=64)  # n / H = 6.4: the uncapped factor is 1 - 1.28 < 0
    assert controller.beta == pytest.approx(0.1 * 0.8)
    controller.update(kl=100.0, n_episodes=64)
    assert controller.beta == pytest.approx(0.1 * 0.8 * 1.2)
    controller.update(kl=6.6, n_episodes=5)  # error 0.1, half a horizon: the usual rule
    assert controller.beta == pytest.approx(0.1 * 0.8 * 1.2 * 1.05)


def test_runs_started_in_the_same_second_get_their_own_folders(cartpole_yaml, tmp_path):
    cfg = load_config(cartpole_yaml, [f"run.root={tmp_path}"])
    first, second = new_run_dir(cfg), new_run_dir(cfg)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name.startswith(first.name)  # "<name>-<time>" and "<name>-<time>-2"


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "/tmp", "../../x"])
def test_a_run_name_is_one_folder_under_the_root(cartpole_yaml, tmp_path, capsys, name):
    root = tmp_path / "runs"
    keep = root / "keep"
    keep.mkdir(parents=True)
    (keep / "marker").write_text("a finished run")
    assert main([*train_args(cartpole_yaml, root), "--name", name, "--overwrite"]) == 1
    assert "must be one folder name under run.root" in capsys.readouterr().err
    assert (keep / "marker").is_file() and sorted(p.name for p in root.iterdir()) == ["keep"]


def test_a_bad_eval_setting_fails_before_training_and_leaves_no_folder(
    cartpole_yaml, tmp_path, capsys
):
    root = tmp_path / "runs"
    args = train_args(cartpole_yaml, root, "total_timesteps=100000", "eval.env_kwargs={bogus: 1}")
    start = time.perf_counter()
    assert main(args) == 1  # the eval env is built at Trainer(), not after 100k steps
    assert time.perf_counter() - start < 10
    assert "bogus" in capsys.readouterr().err
    assert not root.exists() or not any(root.iterdir())


def test_a_second_writer_of_a_run_folder_is_refused(cartpole_yaml, tmp_path, capsys):
    run, _ = _half_run(cartpole_yaml, tmp_path)
    rows = (run / "metrics.csv").read_text()
    with RunLock(run):  # another process training this run
        assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
        assert "is in use by pid" in capsys.readouterr().err
        assert main([*train_args(cartpole_yaml, tmp_path), "--name", "half", "--overwrite"]) == 1
        assert "is in use" in capsys.readouterr().err
    assert (run / "metrics.csv").read_text() == rows
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 0  # free again


def _half_run(cartpole_yaml: Path, tmp_path: Path) -> tuple[Path, Path]:
    cfg = load_config(cartpole_yaml, [f"run.root={tmp_path}", *SMALL])
    trainer = Trainer(cfg, new_run_dir(cfg, "half"))
    trainer.learn(stop_at=256)
    run = tmp_path / "half"
    return run, ckpt.latest_checkpoint(run / "checkpoints")


def _rewrite_weights(meta_path: Path, keep) -> None:
    """Rewrite a checkpoint's tensors (and the recorded hash) without the ones `keep` rejects."""
    meta = json.loads(meta_path.read_text())
    weights = meta_path.parent / meta["weights_file"]
    tensors = {k: v for k, v in load_file(str(weights)).items() if keep(k)}
    save_file(tensors, str(weights))
    meta["weights_sha256"] = ckpt.sha256_of(weights)
    meta_path.write_text(json.dumps(meta))


def test_a_checkpoint_without_optimizer_state_is_refused(cartpole_yaml, tmp_path, capsys):
    run, path = _half_run(cartpole_yaml, tmp_path)
    _rewrite_weights(path, lambda key: not key.startswith("optim/"))
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "incomplete: optimizer state ['optim/0/exp_avg'" in err and "from scratch" in err


def test_a_checkpoint_missing_metadata_names_the_key(cartpole_yaml, tmp_path, capsys):
    run, path = _half_run(cartpole_yaml, tmp_path)
    meta = json.loads(path.read_text())
    del meta["kl_beta"], meta["recent_returns"]
    path.write_text(json.dumps(meta))
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
    assert "metadata keys ['recent_returns', 'kl_beta'] missing" in capsys.readouterr().err


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(
    cartpole_yaml, tmp_path, capsys, monkeypatch
):
    run, path = _half_run(cartpole_yaml, tmp_path)

    def disk_full(tensors, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"cannot write \S+/checkpoints/512\.safetensors: No space left", err), err
    assert ckpt.latest_checkpoint(run / "checkpoints") == path  # still the last good one
    ckpt.read_checkpoint(path)  # and it is intact
    assert not list((run / "checkpoints").glob(".*.tmp"))


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


def test_the_rlhf_evaluation_uses_the_runs_lengths():
    from agents.rlhf.preferences import env_lengths, evaluate_gold_proxy

    for name in ("text_reward_model.yaml", "text_reward_model_nokl.yaml"):
        cfg = load_config(Path(__file__).parents[1] / "configs" / name)
        assert env_lengths(cfg.env.kwargs) == {"max_prompt_tokens": 24, "max_new_tokens": 16}
    assert env_lengths({}) == {"max_prompt_tokens": 32, "max_new_tokens": 32}  # textenv's
    with pytest.raises(TypeError, match="max_new_tokens"):
        evaluate_gold_proxy(None, ["reverse: abc\n"])  # no silent default length


def test_env_sizes_are_checked_against_the_model_before_any_env_exists():
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "text_edit_distance.yaml",
        ["env.kwargs.max_new_tokens=1000000000", "run.progress=false"],
    )
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"1000000032 tokens exceeds the model's context of 320"):
        Trainer(cfg)  # the env would allocate (64, 1e9) int64 buffers first
    assert time.perf_counter() - start < 5


def test_resume_refuses_a_switch_of_run_dtype(gpt2_ctx64_path, tmp_path):
    """bfloat16 forward passes are other numbers, not a rounding difference: a resume that
    switched run.dtype went on silently as another experiment."""
    raw = text_config(gpt2_ctx64_path, str(tmp_path))
    raw["total_timesteps"] = 64  # one iteration of 8 envs x 8 steps
    raw["eval"]["episodes"] = 2
    cfg = load_config(raw)
    trainer = Trainer(cfg, new_run_dir(cfg, "dtype"))
    trainer.learn()
    switched = {**raw, "run": {**raw["run"], "dtype": "bfloat16"}}
    with pytest.raises(
        ckpt.CheckpointError, match=r"run.dtype: 'float32' in the checkpoint, 'bfloat16' in the"
    ):
        Trainer(load_config(switched), trainer.run_dir, resume=True)
    # where and how the run computes and reports may change (same numbers up to rounding)
    moved = {"torch_threads": 2, "checkpoint_every": 64, "progress": True, "device": "auto",
             "allreduce_bucket_mb": 0.0, "root": str(tmp_path / "elsewhere")}  # fmt: skip
    other = {**raw, "name": "renamed", "run": {**raw["run"], **moved}}
    assert Trainer(load_config(other), trainer.run_dir, resume=True).global_step == 64
