"""Data-parallel PPO (agents/core/distributed.py) under torchrun, 2 processes on gloo.

- equivalence: one iteration at 2 ranks x 4 env rows gives the weights of 1 rank x 8 rows on
  the same rollout (CartPole MLP; LM policy on TextRLHF-v0), with advantage normalization,
  running score normalization and the adaptive KL controller on;
- a rank that raises ends the whole job, non-zero, within seconds, its error visible;
- two "nodes" on 127.0.0.1 through torchrun's c10d rendezvous train one run together;
- a 2-rank run resumed from its checkpoint ends with the weights of an uninterrupted one;
- rank 0's evaluations may take longer than the process group's collective timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from dist_worker import one_iteration
from helpers import REPO, text_config
from safetensors.torch import load_file

from agents.core.distributed import LOCAL, Distributed, init_distributed

TESTS = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    """Child processes: this checkout's code first, the test helpers importable, 1 thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    return subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _cartpole_case() -> dict:
    return {
        "name": "cp", "seed": 5, "total_timesteps": 8 * 16 * 2,
        "env": {"id": "CartPole-v1", "num_envs": 8, "vectorization": "sync"},
        "policy": {"type": "mlp", "hidden_sizes": [16, 16]},
        "ppo": {"n_steps": 16, "batch_size": 32, "n_epochs": 2, "normalize_advantage": True},
        "kl": {"enabled": True, "beta": 0.1, "adaptive": True, "target": 0.5, "horizon": 10},
        "score": {"normalize": "running"},
        "eval": {"episodes": 0},
        "run": {"progress": False},
    }  # fmt: skip


def _text_case(model_path: str, root: str) -> dict:
    cfg = text_config(model_path, root, batch_size=16, normalize_advantage=True)
    cfg["kl"].update(adaptive=True, target=0.5, horizon=10)
    cfg["score"] = {"normalize": "running"}
    cfg["eval"]["episodes"] = 0
    return cfg


def _grpo_case(root: str) -> dict:
    """Critic-free: GRPO over groups of 4 rows (one group per rank), the KL in the loss, the loss
    averaged per sequence (global per-episode weights)."""
    # the default tiny SFT model: its responses end at EOS and score differently (a random model
    # scores 0 everywhere, which would make every advantage 0)
    cfg = text_config(None, root, n_steps=16, batch_size=32, loss_aggregation="sequence")
    cfg["env"]["kwargs"].update(max_prompt_tokens=32, max_new_tokens=16)
    cfg["advantage"] = {"estimator": "grpo", "group_size": 4}
    cfg["kl"].update(placement="loss", estimator="k3")
    cfg["eval"]["episodes"] = 0
    return cfg


def _critic_free_reward_kl_case(root: str, estimator: str) -> dict:
    """Critic-free with the KL in the reward: groups compared on the task scores (gathered),
    `normalize_advantage` as a scale only, per-token REINFORCE++ whitened over all ranks; RLOO
    with the constant `token_sum` normalizer (the global minibatch size)."""
    cfg = _grpo_case(root)
    aggregation = "token_sum" if estimator == "rloo" else "token"
    cfg["ppo"].update(normalize_advantage=True, loss_aggregation=aggregation)
    cfg["advantage"] = {"estimator": estimator, "group_size": 2}
    cfg["kl"].update(placement="reward", estimator="k1")
    return cfg


def test_world_size_1_is_a_no_op():
    dist = init_distributed()
    assert dist is LOCAL and dist.world_size == 1 and dist.is_main and not dist.active
    t = torch.tensor([1.5, 2.0])
    assert dist.sum(t) is t and t.tolist() == [1.5, 2.0]
    assert dist.sum_floats(1.0, 2) == [1.0, 2]
    assert dist.gather_floats([3, 4]) == [3.0, 4.0]
    assert dist.gather_lists({"b": [1], "a": []}) == {"b": [1.0], "a": []}
    assert dist.moments(torch.tensor([1.0, 3.0])) == (2, 2.0, 2.0)


def test_collectives_combine_rank_dependent_inputs(tmp_path):
    result = _torchrun(
        "--standalone", "--nproc_per_node=2", str(TESTS / "dist_worker.py"),
        "collectives", str(tmp_path), "-",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((tmp_path / "collectives.json").read_text())
    assert got["gather_lists"] == {
        "a": [0.0, 0.5, 1.0, 1.5],  # rank order
        "empty": [],
        "only_rank_0": [3.25],
        "only_rank_1": [7.0, -1.0, 1e300],  # float64, exactly
    }
    assert got["gather_lists_list"] == ["a", "empty", "only_rank_0", "only_rank_1"]
    assert got["sum_async"] == [2.0, 1.0]
    assert got["gather_floats"] == [0.0, 1.0, 1.0]


def test_num_envs_and_batch_size_must_divide_the_world_size():
    dist = Distributed(rank=0, world_size=3)
    assert dist.check_divides("env.num_envs", 6) == 2
    with pytest.raises(ValueError, match=r"env\.num_envs=8 must be divisible by the world size 3"):
        dist.check_divides("env.num_envs", 8)


@pytest.mark.parametrize(
    "override, message",
    [
        ("run.dir=x", "unknown config key 'run.dir'"),
        ("env.num_envs=3 ppo.batch_size=8", "env.num_envs=3 must be divisible by the world size 2"),
    ],
)
def test_nproc_checks_the_config_before_starting_ranks(tmp_path, override, message):
    # what every rank would reject is rejected once, by the launcher, before torchrun starts
    config = _cartpole_yaml(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "train", str(config), "--nproc", "2", "--set", *override.split()],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count(message) == 1, result.stderr
    assert "torch.distributed" not in result.stderr and "OMP_NUM_THREADS" not in result.stderr


def test_two_ranks_equal_one_rank_after_one_iteration(gpt2_ctx64_path, tmp_path):
    # the gradient sum overlapped with the backward in many small buckets (the LM: hundreds),
    # and without overlap (one bucket) on the target_kl path (stats summed before the backward)
    text_buckets = _text_case(gpt2_ctx64_path, str(tmp_path))
    text_buckets["run"]["allreduce_bucket_mb"] = 0.002
    cartpole_one_bucket = _cartpole_case()
    cartpole_one_bucket["run"]["allreduce_bucket_mb"] = 0
    cartpole_one_bucket["ppo"]["target_kl"] = 0.5
    cases = {
        "cartpole": _cartpole_case(),
        "text": _text_case(gpt2_ctx64_path, str(tmp_path)),
        "grpo": _grpo_case(str(tmp_path)),
        "rloo": _critic_free_reward_kl_case(str(tmp_path), "rloo"),
        "reinforce_pp": _critic_free_reward_kl_case(str(tmp_path), "reinforce_pp"),
        "text_buckets": text_buckets,
        "cartpole_one_bucket": cartpole_one_bucket,
    }
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    result = _torchrun(
        "--standalone", "--nproc_per_node=2", str(TESTS / "dist_worker.py"),
        "equivalence", str(tmp_path), str(tmp_path / "cases.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name, cfg in cases.items():
        weights, metrics = one_iteration(cfg, LOCAL)
        two = load_file(str(tmp_path / f"{name}.safetensors"))
        two_metrics = json.loads((tmp_path / f"{name}.json").read_text())
        assert two.keys() == weights.keys()
        changed = 0
        for key, w in weights.items():
            torch.testing.assert_close(two[key], w, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
            changed += 1
        assert changed > 0
        # the run moved (not a trivial equality of initial weights) and used every minibatch
        assert metrics["train/n_minibatch_steps"] == two_metrics["train/n_minibatch_steps"] > 2
        for key in ("train/policy_loss", "train/value_loss", "train/approx_kl", "kl_beta_after",
                    "train/explained_variance", "score/raw_mean", "score/running_std",
                    "advantage/episode_return_mean", "train/kl_loss"):  # fmt: skip
            assert (key in metrics) == (key in two_metrics), key
            if key in metrics:
                assert two_metrics[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key
        if cfg["kl"].get("adaptive"):
            assert metrics["kl_beta_after"] != cfg["kl"]["beta"]  # the adaptive controller moved
    grpo = one_iteration(cases["grpo"], LOCAL)[1]
    assert "train/value_loss" not in grpo and grpo["advantage/zero_variance_groups"] < 1


def test_an_evaluation_longer_than_the_collective_timeout_does_not_end_the_job(tmp_path):
    """Rank 0 evaluates alone while the other ranks wait for it: in a collective whose timeout
    covers an evaluation, not in the next training collective (whose timeout is for a hung peer).
    Here each evaluation (at the start, after iteration 2, and the final one of a 3-iteration
    run) outlasts the group's 2 s timeout."""
    from dist_worker import SLOW_EVAL_S, SLOW_EVAL_TIMEOUT_S

    assert SLOW_EVAL_S > SLOW_EVAL_TIMEOUT_S
    cfg = _cartpole_case()
    cfg.update(total_timesteps=8 * 16 * 3)
    cfg["kl"] = {"enabled": False}
    cfg["eval"] = {"episodes": 2, "every": 8 * 16 * 2}
    (tmp_path / "case.json").write_text(json.dumps(cfg))
    result = _torchrun(
        "--standalone", "--nproc_per_node=2", str(TESTS / "dist_worker.py"),
        "slow_eval", str(tmp_path), str(tmp_path / "case.json"), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "slow_eval.json").read_text())
    assert summary["finished"] and summary["iterations"] == 3
    assert summary["initial_return"] is not None and summary["final_return"] is not None


def _cartpole_yaml(tmp_path: Path, **env: object) -> Path:
    cfg = {
        "name": "dp", "seed": 2, "total_timesteps": 4 * 8 * 6,
        "env": {"id": "CartPole-v1", "num_envs": 4, "vectorization": "sync", **env},
        "policy": {"type": "mlp", "hidden_sizes": [16, 16]},
        "ppo": {"n_steps": 8, "batch_size": 16, "n_epochs": 2},
        "eval": {"episodes": 2},
        "run": {"root": str(tmp_path / "runs"), "progress": False},
    }  # fmt: skip
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_rank_that_raises_ends_the_job(tmp_path):
    config = _cartpole_yaml(tmp_path, id="dist_worker:RaisesOnRank1-v0", kwargs={"n_steps": 8})
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "train", str(config), "--nproc", "2"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "rank 1 fails on purpose at PPO iteration 3" in result.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end"


@pytest.mark.parametrize("case", ["taken name", "wrong --nproc on resume"])
def test_an_error_under_nproc_is_said_once_without_tracebacks(tmp_path, case):
    """An error that every rank (or rank 0 alone) runs into is printed once, as one line: no
    copy per rank, no gloo traceback from the ranks that lost their peer, no torchrun report."""
    config = _cartpole_yaml(tmp_path)
    train = [sys.executable, "-m", "agents.cli", "train", str(config)]
    first = subprocess.run([*train, "--name", "done"], cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    again = (
        ["--name", "done"] if case == "taken name"
        else ["--resume", str(tmp_path / "runs" / "done")]
    )  # fmt: skip
    result = subprocess.run([*train, *again, "--nproc", "2"], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textrlhf train: error: "), result.stderr
    expected = "already exists" if case == "taken name" else "written by 1 ranks"
    assert expected in lines[0]


def _terminal_dispositions() -> None:
    """In the child, before exec: SIGINT and SIGTERM as in a job started from an interactive
    shell (the test process may have inherited SIGINT ignored: nohup, background jobs, CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "label", "code"), [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143)]
)
def test_a_stop_signal_stops_every_rank_after_the_same_iteration(tmp_path, sig, label, code):
    """Ctrl-C at the terminal (SIGINT to the launcher's process group) or SIGTERM (a scheduler,
    `timeout`) reaches `--nproc 2`'s launcher, which passes it on to the ranks: they agree to
    stop after one iteration, each saves its state at that step, rank 0 prints the command that
    resumes the run at the same world size, and the job exits 128 + signal."""
    config = _cartpole_yaml(tmp_path)
    cmd = [sys.executable, "-m", "agents.cli", "train", str(config), "--nproc", "2",
           "--name", "stopped", "--set", "total_timesteps=100000000"]  # fmt: skip
    job = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a terminal's Ctrl-C signals the launcher's process group
        preexec_fn=_terminal_dispositions,
    )  # fmt: skip
    metrics = tmp_path / "runs" / "stopped" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 2):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(job.pid, sig)
    out, err = job.communicate(timeout=60)
    assert job.returncode == code, err[-3000:]
    assert err.count(f"{label}: stopping after this iteration") == 1  # rank 0 says it, once
    assert "Traceback" not in err, err[-3000:]
    run = tmp_path / "runs" / "stopped"
    summary = json.loads((run / "summary.json").read_text())
    step = summary["steps"]
    assert summary["interrupted"] is True and summary["finished"] is False and step > 0
    assert f"stopped by {label} at step {step:,}" in out
    assert f"--nproc 2 --resume {run}" in out
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == step
    assert (run / "checkpoints" / f"{step}.rank1.json").is_file()  # rank 1 stopped there too


@pytest.mark.slow  # ~40 s under load: 4 processes start
def test_two_nodes_on_localhost_train_one_run(tmp_path):
    config = _cartpole_yaml(tmp_path)
    port = _free_port()
    common = [
        "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=textrlhf-test", "--module", "agents.cli",
        "train", str(config), "--name", "two_nodes",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    nodes = [
        subprocess.Popen(
            [*cmd, f"--node_rank={r}", *common],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    run = tmp_path / "runs" / "two_nodes"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 * 8 * 6 and summary["finished"]
    # rank 1 (the other node) wrote its own state next to rank 0's checkpoint
    assert (run / "checkpoints" / "192.rank1.json").is_file()
    assert "run folder:" in outputs[0][0] + outputs[1][0]


@pytest.mark.slow  # ~45 s under load: three 2-rank trainings
def test_resume_at_world_size_2_is_bit_exact(tmp_path):
    cfg = yaml.safe_load(_cartpole_yaml(tmp_path).read_text())
    cfg["eval"]["episodes"] = 0
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    result = _torchrun(
        "--standalone", "--nproc_per_node=2", str(TESTS / "dist_worker.py"),
        "resume", str(tmp_path), str(tmp_path / "cfg.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    final = f"{cfg['total_timesteps']}.safetensors"
    whole = load_file(str(tmp_path / "whole" / "checkpoints" / final))
    part = load_file(str(tmp_path / "part" / "checkpoints" / final))
    # the resumed run went through a checkpoint halfway, with rank 1's own state next to it
    half = cfg["total_timesteps"] // 2
    assert (tmp_path / "part" / "checkpoints" / f"{half}.rank1.json").is_file()
    assert not (tmp_path / "whole" / "checkpoints" / f"{half}.json").exists()
    policy = [k for k in whole if k.startswith("policy/")]
    assert policy
    for key in policy + ["rng/minibatch_shuffle", "rng/torch"]:
        assert torch.equal(whole[key], part[key]), key
    rows = [
        [(k, v) for k, v in zip(lines[0].split(","), line.split(",")) if not k.startswith("time/")]
        for lines in [
            (tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("whole", "part")
        ]
        for line in lines[1:]
    ]
    n = len(rows) // 2
    assert n == 6 and rows[:n] == rows[n:]


@pytest.mark.parametrize("sequence", [False, True])
def test_rank_minibatches_partition_the_global_minibatches(sequence):
    """The parts that 4 ranks own of each global minibatch together are exactly the minibatch
    that 1 rank (same shuffle seed) builds, and every transition is used once per epoch."""
    from gymnasium import spaces

    from agents.core.buffer import RolloutBuffer
    from agents.core.distributed import RowShard

    T, N, W = 4, 8, 4
    space = spaces.Box(-1, 1, (1,))

    def buffer(rows: range, total: int) -> RolloutBuffer:
        buf = RolloutBuffer(T, len(rows), space, spaces.Discrete(2))
        ids = torch.tensor([[t * 100 + r for r in rows] for t in range(T)], dtype=torch.float32)
        buf.advantages.copy_(ids)  # (T, n): the global (t, row) id of each transition
        buf.shard = RowShard(rows.start, total, torch.Generator().manual_seed(7))
        return buf

    batch = 8 if sequence else 4  # sequence: 2 columns of T steps; transitions: 4 of 32
    one = [
        mb.advantages.flatten().tolist() for mb in buffer(range(N), N).minibatches(batch, sequence)
    ]
    parts = [
        [mb.advantages.flatten().tolist() for mb in buffer(range(r, r + N // W), N).minibatches(batch, sequence)]
        for r in range(0, N, N // W)
    ]  # fmt: skip
    assert len(one) == N * T // batch and all(len(p) == len(one) for p in parts)
    for k, expected in enumerate(one):
        got = [x for part in parts for x in part[k]]
        assert sorted(got) == sorted(expected)
    assert sorted(x for mb in one for x in mb) == sorted(
        t * 100 + r for t in range(T) for r in range(N)
    )
    assert any(len(part[k]) == 0 for part in parts for k in range(len(one)))  # empty parts occur
