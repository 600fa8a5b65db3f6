"""`textrlhf` CLI: a short CartPole run end to end, the run folder, and refusals."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal

import pytest
import yaml

from agents.cli import main
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.trainer import Trainer, new_run_dir

SMALL = ["total_timesteps=1024", "ppo.n_epochs=2", "eval.episodes=2", "run.progress=false"]


def train_args(cartpole_yaml, root) -> list[str]:
    return [
        "train",
        str(cartpole_yaml),
        "--set",
        f"run.root={root}",
        *[f"--set={s}" for s in SMALL],
    ]


def metrics_rows(run) -> list[dict[str, str]]:
    """metrics.csv without the wall-clock columns."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")}
                for row in csv.DictReader(f)]  # fmt: skip


def checkpoint_steps(run) -> list[int]:
    return sorted(int(p.stem) for p in (run / "checkpoints").glob("*.safetensors"))


def latest_step(run) -> int:
    meta, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(run / "checkpoints"))
    return meta["global_step"]


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
    # one row per iteration (8 envs x 32 steps), then the final eval at the last step
    rows = metrics_rows(run)
    assert [int(r["step"]) for r in rows] == [256, 512, 768, 1024, 1024]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1024 and summary["iterations"] == 4 and summary["finished"] is True
    assert summary["transitions"] == int(rows[3]["rollout/transitions"])
    assert summary["episodes"] == int(rows[3]["rollout/episodes"])
    assert summary["final_return"] == float(rows[4]["eval/return"]) == summary["best_return"]
    assert summary["wall_time_s"] > 0 and summary["sps"] > 0
    assert (run / "training_curves.png").stat().st_size > 10_000
    assert checkpoint_steps(run) == [1024] and latest_step(run) == 1024
    # `eval` of the saved checkpoint on the final eval's episodes (seed 10_000 + 1) reproduces
    # the final return; the policy is the trained one (measured 51.5 here)
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--seed", "10001"]) == 0
    out = capsys.readouterr().out
    mean = float(re.search(r"mean return over 2 episodes[^:]*: (-?[\d.]+)", out)[1])
    assert mean == pytest.approx(summary["final_return"], abs=0.005)  # printed rounded

    # an existing run folder is refused unless --resume or --overwrite
    (run / "marker").write_text("old run")
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert (run / "marker").is_file() and len(metrics_rows(run)) == 5  # untouched
    assert main([*args, "--overwrite"]) == 0
    assert not (run / "marker").exists()  # replaced, not appended to
    assert metrics_rows(run) == rows and checkpoint_steps(run) == [1024]


@pytest.mark.parametrize(
    ("eval_every", "steps"),
    [
        (0, [256, 512, 768, 1024, 1024]),  # one row per iteration, then the final eval's
        (512, [0, 256, 512, 768, 1024]),  # the initial eval, evals in the rows of 512 and 1024
    ],
)  # fmt: skip
def test_cli_resume_continues_an_interrupted_run(cartpole_yaml, tmp_path, eval_every, steps):
    """A run stopped at 512 steps and resumed with `train --resume` ends exactly like an
    uninterrupted CLI run: same metrics rows (none duplicated), steps, checkpoints and return."""
    overrides = [*SMALL, f"eval.every={eval_every}"]
    args = ["train", str(cartpole_yaml), "--set", f"run.root={tmp_path}",
            *[f"--set={s}" for s in overrides]]  # fmt: skip
    assert main([*args, "--name", "full"]) == 0
    cfg = load_config(cartpole_yaml, [f"run.root={tmp_path}", *overrides])
    half = Trainer(cfg, new_run_dir(cfg, "half"))
    half.learn(stop_at=512)
    assert latest_step(tmp_path / "half") == 512
    interrupted = json.loads((tmp_path / "half" / "summary.json").read_text())
    assert interrupted["steps"] == 512 and interrupted["finished"] is False
    assert main([*args, "--resume", str(tmp_path / "half")]) == 0

    full, resumed = tmp_path / "full", tmp_path / "half"
    assert [int(r["step"]) for r in metrics_rows(full)] == steps
    assert [int(r["step"]) for r in metrics_rows(resumed)] == steps
    assert metrics_rows(resumed) == metrics_rows(full)
    assert checkpoint_steps(resumed) == [512, 1024] and latest_step(resumed) == 1024
    a, b = (json.loads((run / "summary.json").read_text()) for run in (full, resumed))
    for key in ("steps", "iterations", "transitions", "episodes", "final_return", "best_return",
                "finished", "initial_return", "initial_eval_metrics"):  # fmt: skip
        assert a[key] == b[key], key
    assert b["steps"] == 1024 and b["finished"] is True
    assert (b["initial_return"] is not None) == (eval_every > 0)  # the start, kept over a resume


@pytest.fixture
def terminal_signals():
    """The signal dispositions of a process started from an interactive shell: SIGINT raises
    KeyboardInterrupt, SIGTERM ends the process. pytest may have inherited others (SIGINT is
    ignored under nohup, in a background job or in some CI runners); restored afterwards."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def signal_during_iteration(monkeypatch, iteration: int, presses: int, sig=signal.SIGINT) -> None:
    """Send `sig` to this process `presses` times (Ctrl-C: SIGINT) during `iteration`."""
    iterate = Trainer.iterate

    def iterate_and_press(self):
        metrics = iterate(self)
        if self.iteration == iteration:
            for _ in range(presses):
                os.kill(os.getpid(), sig)
        return metrics

    monkeypatch.setattr(Trainer, "iterate", iterate_and_press)


@pytest.mark.parametrize(
    ("sig", "label", "code"),
    [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143),
     (signal.SIGUSR1, "SIGUSR1", 138)],
)  # fmt: skip
def test_a_stop_signal_stops_after_the_iteration_with_a_checkpoint(
    cartpole_yaml, tmp_path, capsys, monkeypatch, terminal_signals, sig, label, code
):
    """The first Ctrl-C or SIGTERM (what `timeout`, `kill` and schedulers send) ends `textrlhf
    train` at the end of its iteration: a checkpoint of that step, `interrupted` in the summary,
    exit 128 + signal and the command that resumes it (SIGUSR1: SLURM's `--signal` warning); resuming then ends exactly like a run that
    was never stopped. The handlers found before are restored."""
    args = train_args(cartpole_yaml, tmp_path)
    assert main([*args, "--name", "full"]) == 0
    with monkeypatch.context() as patch:
        signal_during_iteration(patch, iteration=2, presses=1, sig=sig)
        assert main([*args, "--name", "half"]) == code
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    half = tmp_path / "half"
    out, err = capsys.readouterr()
    assert f"{label}: stopping after this iteration" in err and "Traceback" not in err
    assert f"stopped by {label} at step 512" in out
    resume = re.search(r"continue with:\n  (.*)\n", out)[1]
    assert resume.endswith(f"--resume {half}") and " run.progress=false " in resume
    summary = json.loads((half / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["finished"] is False
    assert summary["stop_signal"] == label
    assert summary["steps"] == 512 and latest_step(half) == 512

    assert main(shlex.split(resume)[1:]) == 0  # the printed command, as typed
    assert metrics_rows(half) == metrics_rows(tmp_path / "full")
    a, b = (json.loads((run / "summary.json").read_text()) for run in (tmp_path / "full", half))
    for key in ("steps", "transitions", "episodes", "final_return", "finished", "interrupted"):
        assert a[key] == b[key], key
    assert b["finished"] is True and b["interrupted"] is False


@pytest.mark.parametrize(("sig", "label", "code"), [(signal.SIGINT, "Ctrl-C", 130),
                                                     (signal.SIGTERM, "SIGTERM", 143)])  # fmt: skip
def test_a_second_stop_signal_stops_at_once(
    cartpole_yaml, tmp_path, capsys, monkeypatch, terminal_signals, sig, label, code
):
    signal_during_iteration(monkeypatch, iteration=2, presses=2, sig=sig)
    assert main([*train_args(cartpole_yaml, tmp_path), "--name", "hard"]) == code
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    err = capsys.readouterr().err
    assert f"textrlhf train: stopped by {label}" in err and "Traceback" not in err
    run = tmp_path / "hard"
    assert not (run / "summary.json").exists() and checkpoint_steps(run) == []
    assert [int(r["step"]) for r in metrics_rows(run)] == [256]  # logged before the stop
    assert not list(run.rglob("*.tmp*"))  # no temp file left behind


def test_a_run_started_with_sigint_ignored_stays_deaf_to_it(
    cartpole_yaml, tmp_path, capsys, monkeypatch, terminal_signals
):
    """Under `nohup` or in a background job SIGINT is ignored from the start: a Ctrl-C meant for
    the terminal's foreground job neither stops the run nor makes it Ctrl-C-able, and the
    disposition is still SIG_IGN afterwards."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal_during_iteration(monkeypatch, iteration=2, presses=2)
    assert main([*train_args(cartpole_yaml, tmp_path), "--name", "nohup"]) == 0
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    summary = json.loads((tmp_path / "nohup" / "summary.json").read_text())
    assert summary["finished"] is True and summary["interrupted"] is False
    assert "Ctrl-C" not in capsys.readouterr().err


def test_ctrl_c_during_the_initial_evaluation_saves_step_0(
    cartpole_yaml, tmp_path, capsys, monkeypatch, terminal_signals
):
    """A Ctrl-C while the run evaluates its starting policy (before the first iteration) ends
    with a checkpoint at step 0, so the folder can be resumed; the resumed run equals a run that
    was never stopped."""
    args = [*train_args(cartpole_yaml, tmp_path), "--set", "eval.every=512"]
    assert main([*args, "--name", "full"]) == 0
    evaluate = Trainer._eval_return
    with monkeypatch.context() as patch:

        def press_during_first_eval(self):
            if self.global_step == 0:
                os.kill(os.getpid(), signal.SIGINT)
            return evaluate(self)

        patch.setattr(Trainer, "_eval_return", press_during_first_eval)
        assert main([*args, "--name", "early"]) == 130
    out = capsys.readouterr().out
    early = tmp_path / "early"
    assert "stopped by Ctrl-C at step 0" in out and latest_step(early) == 0
    assert json.loads((early / "summary.json").read_text())["interrupted"] is True
    assert main(shlex.split(re.search(r"continue with:\n  (.*)\n", out)[1])[1:]) == 0
    assert metrics_rows(early) == metrics_rows(tmp_path / "full")


def test_cli_resuming_a_finished_run_changes_nothing(cartpole_yaml, tmp_path):
    run = tmp_path / "done"
    assert main([*train_args(cartpole_yaml, tmp_path), "--name", "done"]) == 0
    rows, summary = metrics_rows(run), json.loads((run / "summary.json").read_text())
    meta = (run / "checkpoints" / "1024.json").read_bytes()
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 0
    after = json.loads((run / "summary.json").read_text())
    for key in ("steps", "iterations", "transitions", "episodes", "final_return", "finished"):
        assert after[key] == summary[key], key
    assert checkpoint_steps(run) == [1024] and latest_step(run) == 1024
    steps = [int(r["step"]) for r in metrics_rows(run)]
    assert steps == [256, 512, 768, 1024, 1024]  # no second final-eval row
    assert metrics_rows(run) == rows
    assert (run / "checkpoints" / "1024.json").read_bytes() == meta  # not rewritten


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
