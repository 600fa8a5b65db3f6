"""Asynchronous actor-learner training (agents/run/async_train.py, agents/core/actor.py).

- `rollout.max_staleness: 0` with 1 actor gives the synchronous run's weights, bit for bit
  (CartPole MLP; LM policy with the KL penalty and running score normalization);
- `--replay RUN` re-runs a run's recorded schedule and ends with its weights, bit for bit, and
  the recorded staleness never exceeds max_staleness;
- an actor that raises ends the job with its error within 60 s;
- the importance-weight statistics and the corrections of the PPO update (in-process);
- config errors name the bad value and the allowed ones.

`textrlhf train` launches the learner and the actor through torchrun itself; the subprocesses
get this checkout's code and the test envs on PYTHONPATH, and none of the torchrun variables
the test process may have inherited.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DISTRIBUTED_VARS
from helpers import CONFIGS, REPO, text_config
from safetensors.torch import load_file

from agents.cli import main
from agents.run.config import load_config

TESTS = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    """Child processes: this checkout's code first, the test envs importable, 1 thread, and no
    torchrun variables from the test process's environment."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(config: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "agents.cli", "train", str(config), *args]
    return subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _cartpole(tmp_path: Path, **top: object) -> Path:
    cfg = {
        "name": "cp", "seed": 4, "total_timesteps": 8 * 16 * 6,
        "env": {"id": "CartPole-v1", "num_envs": 8, "vectorization": "sync"},
        "policy": {"type": "mlp", "hidden_sizes": [16, 16]},
        "ppo": {"n_steps": 16, "batch_size": 32, "n_epochs": 2},
        "kl": {"enabled": True, "beta": 0.1, "adaptive": True, "target": 0.5, "horizon": 10},
        "score": {"normalize": "running"},
        "eval": {"episodes": 2, "every": 8 * 16 * 3},
        "run": {"root": str(tmp_path / "runs"), "progress": False},
        **top,
    }  # fmt: skip
    path = tmp_path / "cp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    step = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    tensors = load_file(str(run / "checkpoints" / f"{step}.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("policy/")}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa and wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _metrics(run: Path, drop: tuple[str, ...] = ("time/", "async/")) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in row.items() if not k.startswith(drop)} for row in csv.DictReader(f)
        ]


def _schedule(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "schedule.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["cartpole", "lm"])
def test_staleness_0_with_1_actor_equals_the_synchronous_run(kind, tmp_path, gpt2_ctx64_path):
    if kind == "cartpole":
        config = _cartpole(tmp_path)
    else:
        cfg = text_config(gpt2_ctx64_path, str(tmp_path / "runs"), batch_size=16)
        cfg["score"] = {"normalize": "running"}
        cfg["eval"].update(episodes=4, every=8 * 8 * 2)
        config = tmp_path / "lm.yaml"
        config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--name", "sync"]) == 0  # in-process, 1 process
    result = _train(config, "--name", "async", "--set", "rollout.actors=1")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs"
    _assert_same_weights(runs / "sync", runs / "async")
    # the same run: every logged number but the wall clock and the async/ columns
    assert _metrics(runs / "sync") == _metrics(runs / "async")
    schedule = _schedule(runs / "async")
    assert [r["version"] for r in schedule] == list(range(len(schedule)))  # generate, then train
    summary = json.loads((runs / "async" / "summary.json").read_text())
    assert summary["finished"] and summary["iterations"] == len(schedule) > 2
    header = (runs / "async" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("staleness_mean", "staleness_max", "is_weight_mean", "is_weight_max",
                "is_frac_truncated", "is_ess", "learner_idle", "actor_idle"):  # fmt: skip
        assert f"async/{key}" in header


def test_replay_ends_with_the_weights_of_the_run_and_staleness_stays_bounded(tmp_path):
    config = _cartpole(tmp_path)
    correction = "decoupled"  # the extra forward pass at the start of each update included
    S = 2
    common = ["--set", "rollout.actors=1", f"rollout.max_staleness={S}",
              f"rollout.correction={correction}"]  # fmt: skip
    first = _train(config, "--name", "first", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "runs"
    schedule = _schedule(runs / "first")
    assert [r["update"] for r in schedule] == [r["batch"] for r in schedule] == list(range(6))
    for r in schedule:
        assert r["staleness"] == r["update"] - r["version"]
        assert 0 <= r["staleness"] <= S, schedule
    again = _train(config, "--name", "again", "--replay", str(runs / "first"), *common)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_same_weights(runs / "first", runs / "again")
    assert _schedule(runs / "again") == schedule
    assert _metrics(runs / "first", ("time/", "async/learner", "async/actor")) == _metrics(
        runs / "again", ("time/", "async/learner", "async/actor")
    )


def test_replay_refuses_another_experiment(tmp_path):
    from agents.run.async_train import append_line, replay_versions
    from agents.run.config import save_config

    cfg = load_config(_cartpole(tmp_path), ["rollout.actors=1", "rollout.max_staleness=1"])
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    for k, v in enumerate([0, 0, 1]):
        append_line(run / "schedule.jsonl", {"update": k, "batch": k, "version": v})
    assert replay_versions(cfg, run) == [0, 0, 1]
    # what a resume may change may differ (evaluation settings)
    assert replay_versions(load_config(cfg.model_dump(), ["eval.episodes=5"]), run) == [0, 0, 1]
    with pytest.raises(ValueError, match="ppo.n_epochs: 2 in the checkpoint, 3 in the config"):
        replay_versions(load_config(cfg.model_dump(), ["ppo.n_epochs=3"]), run)
    with (run / "schedule.jsonl").open("a") as f:
        f.write('{"update": 3, "bat')  # a torn last line (a crash while appending) is ignored
    assert replay_versions(cfg, run) == [0, 0, 1]
    (run / "schedule.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no schedule.jsonl"):
        replay_versions(cfg, run)


def test_an_actor_that_raises_ends_the_job_within_60_s(tmp_path):
    config = _cartpole(
        tmp_path,
        env={
            "id": "async_envs:RaisesInRollout-v0",
            "num_envs": 8,
            "vectorization": "sync",
            "kwargs": {"n_steps": 16},
        },  # fmt: skip
        total_timesteps=8 * 16 * 1000,
    )
    start = time.monotonic()
    result = _train(config, "--name", "fails", "--set", "rollout.actors=1",
                    "rollout.max_staleness=1", timeout=120)  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "the env fails on purpose in rollout 3" in result.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end"
    # the learner saved the state before the failed rollout (updates 0 and 1 done), with the
    # actor's state before it, and said how to continue
    run = tmp_path / "runs" / "fails"
    step = 2 * 8 * 16
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == step
    assert json.loads((run / "checkpoints" / f"{step}.actor.json").read_text())["next_batch"] == 2
    assert f"saved at step {step}: continue with --resume {run}" in result.stderr
    # it resumes (and this env fails again at once: its step count came back with its state)
    again = _train(config, "--resume", str(run), "--set", "rollout.actors=1",
                   "rollout.max_staleness=1", timeout=120)  # fmt: skip
    assert again.returncode != 0 and "the env fails on purpose" in again.stderr
    assert f"saved at step {step}: continue" in again.stderr


def _terminal_dispositions() -> None:
    """In the child, before exec: SIGINT as in a job started from an interactive shell (the
    test process may have inherited it ignored: nohup, background jobs, CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_ctrl_c_stops_learner_and_actor_and_the_printed_command_resumes(tmp_path):
    iterations = 150
    config = _cartpole(tmp_path, total_timesteps=8 * 16 * iterations)
    cmd = [sys.executable, "-m", "agents.cli", "train", str(config), "--name", "stopped",
           "--set", "rollout.actors=1", "rollout.max_staleness=1"]  # fmt: skip
    job = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_terminal_dispositions,
    )  # fmt: skip
    run = tmp_path / "runs" / "stopped"
    deadline = time.monotonic() + 120
    while not ((run / "metrics.csv").is_file() and len(_metrics(run)) > 2):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGINT)  # a terminal's Ctrl-C: the launcher's process group
    out, err = job.communicate(timeout=60)
    assert job.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["finished"] is False
    step = summary["steps"]
    assert f"stopped by Ctrl-C at step {step:,}" in out
    assert f"--resume {run}" in out and "--nproc" not in out
    assert (run / "checkpoints" / f"{step}.actor.json").is_file()
    assert len(_schedule(run)) == step // (8 * 16)
    # the printed command continues the run to its end
    resumed = _train(config, "--resume", str(run), "--set", "rollout.actors=1",
                     "rollout.max_staleness=1")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 8 * 16 * iterations
    schedule = _schedule(run)
    assert [r["update"] for r in schedule] == list(range(iterations))
    assert all(0 <= r["staleness"] <= 1 for r in schedule)


def test_rollout_config_errors_name_the_value_and_the_choices():
    cfg = load_config(CONFIGS / "cartpole.yaml")
    assert (cfg.rollout.actors, cfg.rollout.max_staleness, cfg.rollout.correction) == (0, 0, "none")
    with pytest.raises(ValueError, match=r"rollout.actors=2: .* allowed: \[0, 1\]"):
        load_config(CONFIGS / "cartpole.yaml", ["rollout.actors=2"])
    with pytest.raises(ValueError, match=r"'none', 'decoupled', 'tis'\], got 'vtrace'"):
        load_config(CONFIGS / "cartpole.yaml", ["rollout.correction=vtrace"])
    with pytest.raises(ValueError, match=r"rollout.max_staleness.*-1"):
        load_config(CONFIGS / "cartpole.yaml", ["rollout.max_staleness=-1"])
    with pytest.raises(ValueError, match=r"did you mean 'max_staleness'"):
        load_config(CONFIGS / "cartpole.yaml", ["rollout.max_stalenes=1"])


def test_resume_from_a_checkpoint_continues_the_schedule_bit_for_bit(tmp_path):
    """A run stopped at its checkpoint halfway (a crash just after it: the later checkpoint and
    log lines are gone) and resumed with the original schedule ends with the uninterrupted
    run's weights, metrics and schedule; the checkpoint held the actor's state and the batches
    it had sampled ahead."""
    import shutil

    config = _cartpole(tmp_path, run={"root": str(tmp_path / "runs"), "progress": False,
                                      "checkpoint_every": 8 * 16 * 3})  # fmt: skip
    common = ["--set", "rollout.actors=1", "rollout.max_staleness=2"]
    runs = tmp_path / "runs"
    first = _train(config, "--name", "whole", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    half = 8 * 16 * 3
    checkpoints = runs / "whole" / "checkpoints"
    assert (checkpoints / f"{half}.actor.json").is_file()
    inflight = json.loads((checkpoints / f"{half}.inflight.json").read_text())
    assert inflight["batches"] == list(range(3, inflight["next_batch"]))
    part = runs / "part"
    shutil.copytree(runs / "whole", part)
    for path in (part / "checkpoints").glob(f"{8 * 16 * 6}.*"):
        path.unlink()
    (part / "checkpoints" / "latest.json").write_text(
        json.dumps({"checkpoint": f"{half}.json", "step": half})
    )
    (part / "summary.json").unlink()
    resumed = _train(config, "--resume", str(part), "--replay", str(runs / "whole"), *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(runs / "whole", part)
    assert _schedule(part) == _schedule(runs / "whole")
    drop = ("time/", "async/learner", "async/actor")
    assert _metrics(part, drop) == _metrics(runs / "whole", drop)


# ----------------------------------------------------------------------------- the update


def _collected(corrections: str, offset: float, *overrides: str):
    """A CartPole trainer after one rollout whose behaviour log-probs are `offset` below the
    policy's: importance weights pi / mu = exp(offset) on every valid step."""
    from agents.run.trainer import Trainer

    cfg = load_config(
        CONFIGS / "cartpole.yaml",
        ["total_timesteps=512", "eval.episodes=0", "ppo.n_epochs=1", "ppo.batch_size=256",
         f"rollout.correction={corrections}", *overrides],
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.collector.collect()
    buf = trainer.buffer
    buf.log_probs.sub_(offset * buf.valid)
    buf.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    trainer.ppo.off_policy = True
    trainer.ppo.correction, trainer.ppo.tis_cap = corrections, 1.2
    return trainer


@pytest.mark.parametrize("correction", ["none", "decoupled", "tis"])
def test_importance_weight_statistics(correction):
    trainer = _collected(correction, 0.25)
    behaviour = trainer.buffer.log_probs.clone()
    stats = trainer.ppo.update(trainer.buffer, 0)
    w = torch.exp(torch.tensor(0.25)).item()
    got = trainer.ppo.off_policy_stats
    assert got["is_weight_mean"] == pytest.approx(w, rel=1e-5)
    assert got["is_weight_max"] == pytest.approx(w, rel=1e-5)
    assert got["is_frac_truncated"] == 1.0  # exp(0.25) = 1.28 > tis_cap 1.2
    assert got["is_ess"] == pytest.approx(1.0)
    assert torch.equal(trainer.buffer.log_probs, behaviour)  # the buffer keeps mu's
    assert stats["n_minibatch_steps"] == 1


def test_decoupled_clips_against_the_start_of_the_update_and_weighs_by_the_truncated_ratio():
    """With every weight pi_start / mu = e^0.25 truncated to 1.2: the decoupled loss takes its
    ratio against pi_start (the policy's own log-probs here, as in an on-policy update) and
    its coefficients are the on-policy ones times 1.2."""
    on = _collected("none", 0.0)
    decoupled = _collected("decoupled", 0.25)
    behaviour = decoupled.buffer.log_probs.clone()
    saved = decoupled.ppo._proximal(decoupled.buffer)
    assert decoupled.ppo.off_policy_stats["is_frac_truncated"] == 1.0
    assert torch.equal(saved, behaviour)
    torch.testing.assert_close(decoupled.buffer.log_probs, on.buffer.log_probs)
    a = on.ppo.prepare(on.buffer.full_batch(False), 0.2)
    b = decoupled.ppo.prepare(decoupled.buffer.full_batch(False), 0.2)
    torch.testing.assert_close(b.coef, 1.2 * a.coef)
    assert torch.equal(b.ratio_low, a.ratio_low) and torch.equal(b.ratio_high, a.ratio_high)


@pytest.mark.slow  # ~1 minute: 100k CartPole steps in two processes
def test_cartpole_with_an_actor_learns(tmp_path):
    root = tmp_path / "runs"
    result = _train(CONFIGS / "cartpole.yaml", "--name", "cp", "--set", f"run.root={root}",
                    "run.progress=false", "rollout.actors=1", "rollout.max_staleness=1",
                    timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((root / "cp" / "summary.json").read_text())
    assert summary["final_return"] >= 475, summary
    assert max(r["staleness"] for r in _schedule(root / "cp")) <= 1


def test_tis_is_the_policy_gradient_weighted_by_the_truncated_ratio():
    """Ratios pi / mu = e^0.25 on every step, truncated to 1.2: the gradient of the tis loss is
    1.2 times the on-policy one (ratio 1, inside the clip band: -A grad log pi)."""
    grads = []
    for correction, offset in (("none", 0.0), ("tis", 0.25)):
        trainer = _collected(correction, offset, "ppo.vf_coef=0")
        ppo, batch = trainer.ppo, trainer.buffer.full_batch(False)
        loss, _ = ppo.loss(batch, ppo.prepare(batch, 0.2), 0.2)
        ppo.zero_grad()
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1).clone() for p in ppo.params]))
    torch.testing.assert_close(grads[1], 1.2 * grads[0], rtol=1e-4, atol=1e-7)
