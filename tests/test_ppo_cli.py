"""`textrlhf` CLI: a short CartPole run end to end, the run folder, and refusals."""

from __future__ import annotations

import json

import yaml

from agents.cli import main


def test_cli_train_smoke_run_writes_the_run_folder(cartpole_yaml, tmp_path, capsys):
    # --set takes one or several KEY=VALUE pairs and may be repeated
    args = ["train", str(cartpole_yaml), "--set", f"run.root={tmp_path}", "--name", "smoke",
            "--set", "total_timesteps=1024", "ppo.n_epochs=2",
            "--set", "eval.episodes=2", "run.progress=false"]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "smoke"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ppo"]["n_epochs"] == 2 and saved["run"]["progress"] is False
    assert list(run.glob("events.out.tfevents.*"))
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl",
                "train/clipfrac", "train/explained_variance", "train/lr", "rollout/ep_return",
                "rollout/ep_length", "time/rollout_time", "time/update_time", "time/sps"):  # fmt: skip
        assert key in header
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1024 and summary["finished"] is True
    for key in ("final_return", "best_return", "wall_time_s", "sps"):
        assert isinstance(summary[key], float)
    assert (run / "training_curves.png").stat().st_size > 10_000
    assert (run / "checkpoints" / "latest.json").is_file()
    assert (run / "checkpoints" / "1024.safetensors").is_file()

    # an existing run folder is refused unless --resume or --overwrite
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    # resuming a finished run is a no-op that keeps the folder consistent
    assert main(["train", str(cartpole_yaml), "--resume", str(run), "--set", f"run.root={tmp_path}",
                 "--set", "total_timesteps=1024", "--set", "ppo.n_epochs=2",
                 "--set", "eval.episodes=2", "--set", "run.progress=false"]) == 0  # fmt: skip

    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "mean return over 3 episodes" in out


def test_cli_reports_bad_input_clearly(cartpole_yaml, tmp_path, capsys):
    assert main(["train", str(cartpole_yaml), "--set", "ppo.n_epoch=3"]) == 1
    assert "did you mean 'n_epochs'" in capsys.readouterr().err
    bad_env = ["train", str(cartpole_yaml), "--set", "env.id=CartPol-v1",
               "--set", f"run.root={tmp_path}", "--name", "x"]  # fmt: skip
    assert main(bad_env) == 1
    assert "unknown env id 'CartPol-v1'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing is created for a run that cannot start
    assert main(["eval", str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().err
