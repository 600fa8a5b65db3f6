"""The update's diagnostics (agents/core/diagnostics.py, `diagnostics/*` metrics): their numbers
on hand-made rollouts, ~0 drift and no ratio outside the clip band for consistent policies (the
LM in float32, CartPole's MLP), a warning once per run for a policy whose evaluate disagrees with
its act, the same training with or without them, and the same numbers at 2 ranks as at 1."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from dist_worker import one_iteration
from helpers import REPO, lm_policy_config, make_prompts, spaces_for, text_config

from agents.core.buffer import RolloutBuffer
from agents.core.diagnostics import DIAGNOSTICS, FirstEpoch, update_diagnostics
from agents.core.distributed import LOCAL
from agents.policies import make_policy
from agents.policies.base import Minibatch
from agents.run.config import load_config
from agents.run.trainer import Trainer

TESTS = Path(__file__).resolve().parent


def _cartpole(**run) -> dict:
    return {
        "name": "cp", "seed": 2, "total_timesteps": 4 * 32 * 3,
        "env": {"id": "CartPole-v1", "num_envs": 4, "vectorization": "sync"},
        "policy": {"type": "mlp", "hidden_sizes": [16, 16]},
        "ppo": {"n_steps": 32, "batch_size": 64, "n_epochs": 2},
        "eval": {"episodes": 0}, "run": {"progress": False, **run},
    }  # fmt: skip


def _iterations(cfg: dict, n: int, patch=None) -> tuple[Trainer, list[dict[str, float]]]:
    trainer = Trainer(load_config(cfg))
    if patch is not None:
        patch(trainer)
    try:
        return trainer, [trainer.iterate() for _ in range(n)]
    finally:
        trainer.close()


# ----------------------------------------------------------------------------- numbers by hand


def _buffer(T: int = 3, N: int = 2) -> RolloutBuffer:
    return RolloutBuffer(T, N, gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(2))


def test_the_statistics_on_a_rollout_worked_out_by_hand():
    buf = _buffer()  # T=3 steps x N=2 rows; row 1's last step is not a real transition
    buf.valid[:] = torch.tensor([[1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    buf.episode_starts[0] = True  # both episodes start at t=0 ...
    buf.terminated[2, 0] = buf.terminated[1, 1] = True  # ... and end at t=2 (row 0), t=1 (row 1)
    buf.log_probs[:] = torch.tensor([[-1.0, -2.0], [-1.0, -1.0], [-0.5, -9.0]])
    first = FirstEpoch(6, buf.device)
    # evaluate's log-probs: log-ratios 0, ln 1.5, 0, ln 0.5, 0 on the 5 valid steps
    evaluated = torch.tensor(
        [[-1.0, -2.0 + math.log(1.5)], [-1.0, -1.0 + math.log(0.5)], [-0.5, 7]]
    )
    entropy = torch.tensor([[0.4, 0.8], [0.1, 0.6], [0.2, 5.0]])
    # two minibatches: rows 0 before any optimizer step, then row 1
    for row, fresh in ((0, True), (1, False)):
        mb = Minibatch(*([None] * 9), step_index=buf.step_index[:, [row]])
        first.add(mb, (evaluated[:, [row]], entropy[:, [row]], None), before_any_step=fresh)
    stats = update_diagnostics(buf, first, clip=0.2)
    assert list(stats) == [k for k in DIAGNOSTICS if k != "kl_token_p95"]
    assert stats["logprob_drift_max"] == pytest.approx(0.0, abs=1e-7)  # row 0 alone: fresh
    assert stats["logprob_drift_p95"] == pytest.approx(0.0, abs=1e-7)
    assert stats["outside_clip_band_epoch0"] == pytest.approx(2 / 5)  # 1.5 and 0.5
    assert stats["outside_clip_band_first_minibatch"] == 0.0  # row 0's ratios: all 1
    ratios = np.array([1.0, 1.5, 1.0, 0.5, 1.0])
    ess = ratios.sum() ** 2 / (5 * (ratios**2).sum())
    assert stats["ess"] == pytest.approx(ess, rel=1e-6)  # 25 / 27.5
    assert stats["truncated_mass"] == 0.0  # the policy reported no cut
    assert stats["entropy_first_token"] == pytest.approx((0.4 + 0.8) / 2)
    assert stats["entropy_last_token"] == pytest.approx((0.2 + 0.6) / 2)

    # every step fresh: the drift is over all 5 valid steps; the KL percentile with a reference
    first.fresh[:] = True
    buf.ref_log_probs[:] = buf.log_probs - torch.tensor([[0.0, 0.1], [0.2, 0.3], [0.4, 50.0]])
    buf.truncated_mass[:] = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 9.0]])
    buf.has_truncated_mass = True
    stats = update_diagnostics(buf, first, clip=0.2, kl_estimator="k1")
    drift = np.abs(np.log([1.0, 1.5, 1.0, 0.5, 1.0]))
    assert stats["logprob_drift_max"] == pytest.approx(math.log(2), rel=1e-6)
    assert stats["logprob_drift_p95"] == pytest.approx(np.quantile(drift, 0.95), rel=1e-6)
    assert stats["kl_token_p95"] == pytest.approx(np.quantile([0, 0.1, 0.2, 0.3, 0.4], 0.95))
    assert stats["truncated_mass"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5) / 5)
    assert stats["outside_clip_band_first_minibatch"] == pytest.approx(2 / 5)


def test_no_episode_start_or_end_gives_nan_not_a_number_from_nothing():
    buf = _buffer()
    buf.valid[:] = True  # a rollout in the middle of long episodes
    first = FirstEpoch(6, buf.device)
    first.add(Minibatch(*([None] * 9), step_index=buf.step_index), (buf.log_probs,) * 3, True)
    stats = update_diagnostics(buf, first, clip=0.2)
    assert math.isnan(stats["entropy_first_token"]) and math.isnan(stats["entropy_last_token"])
    assert stats["logprob_drift_max"] == 0.0 and stats["ess"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- consistent policies


def test_a_float32_lm_run_has_no_drift_and_no_ratio_outside_the_clip_band(gpt2_path, tmp_path):
    # one minibatch per epoch (64 = 8 columns x 8 steps): the drift covers every token; and the
    # helper's 2 minibatches: epoch 0's second one is evaluated after one optimizer step
    for batch_size, minibatches in ((64, 1), (32, 2)):
        cfg = text_config(gpt2_path, str(tmp_path), batch_size=batch_size)
        trainer, rows = _iterations(cfg, 2)
        first = trainer.ppo.first_epoch
        valid = trainer.buffer.valid.reshape(-1)
        assert bool(first.seen[valid].all())  # epoch 0 evaluated every token
        fresh = int(first.fresh[valid].sum())  # ... these before any optimizer step
        assert fresh == int(valid.sum()) if minibatches == 1 else 0 < fresh < int(valid.sum())
        for m in rows:
            assert 0 <= m["diagnostics/logprob_drift_max"] <= 1e-5, m
            assert m["diagnostics/logprob_drift_p95"] <= m["diagnostics/logprob_drift_max"]
            assert m["diagnostics/outside_clip_band_epoch0"] == 0.0
            assert m["diagnostics/outside_clip_band_first_minibatch"] == 0.0
            assert 0.99 < m["diagnostics/ess"] <= 1.0 + 1e-9
            assert m["diagnostics/truncated_mass"] == 0.0  # no top-k / top-p
            assert m["diagnostics/kl_token_p95"] >= 0.0  # a reference exists (kl.enabled)
            # a random 2-layer model over 259 bytes is close to uniform: ln 259 = 5.557
            for key in ("entropy_first_token", "entropy_last_token"):
                assert 5.0 < m[f"diagnostics/{key}"] <= math.log(259) + 1e-4, key
        # before any update the policy is the reference: the per-token KL is rounding only
        assert rows[0]["diagnostics/kl_token_p95"] < 1e-5


def test_a_cartpole_run_has_no_drift_and_no_ratio_outside_the_clip_band():
    trainer, rows = _iterations(_cartpole(), 3)
    assert trainer.buffer.num_minibatches(64, False) == 2
    for m in rows:
        assert 0 <= m["diagnostics/logprob_drift_max"] <= 1e-5, m
        assert m["diagnostics/outside_clip_band_epoch0"] == 0.0
        assert m["diagnostics/outside_clip_band_first_minibatch"] == 0.0
        assert 0.9 < m["diagnostics/ess"] <= 1.0 + 1e-9
        assert m["diagnostics/truncated_mass"] == 0.0
        assert "diagnostics/kl_token_p95" not in m  # no reference
        # two actions: an entropy in (0, ln 2]; episodes start and end in every rollout
        for key in ("entropy_first_token", "entropy_last_token"):
            assert 0.5 < m[f"diagnostics/{key}"] <= math.log(2) + 1e-6, key


def test_the_lm_reports_the_mass_its_top_k_cut_away(gpt2_path):
    obs_space, act_space = spaces_for(6, 4)
    policy = make_policy(lm_policy_config(gpt2_path, top_k=5), obs_space, act_space)
    ids, mask = make_prompts([3, 6], 6, 4)
    state = policy.initial_state(2)
    policy.act({"input_ids": ids, "attention_mask": mask}, state)
    logits = state.logits.float() / policy.temperature  # (2, V): the distribution it cut
    kept = torch.softmax(logits, -1).topk(5, -1).values.sum(-1)
    torch.testing.assert_close(policy.truncated_mass(state), 1 - kept, rtol=1e-5, atol=1e-6)
    plain = make_policy(lm_policy_config(gpt2_path), obs_space, act_space)
    state = plain.initial_state(2)
    plain.act({"input_ids": ids, "attention_mask": mask}, state)
    assert plain.truncated_mass(state) is None


def test_a_top_p_run_logs_the_truncated_mass(gpt2_path, tmp_path):
    cfg = text_config(gpt2_path, str(tmp_path), batch_size=64)
    cfg["policy"]["top_p"] = 0.5
    trainer, rows = _iterations(cfg, 1)
    buf = trainer.buffer
    expected = float(buf.truncated_mass[buf.valid].mean())
    # a near-uniform model keeps about half its mass under top_p = 0.5
    assert rows[0]["diagnostics/truncated_mass"] == pytest.approx(expected)
    assert 0.4 < expected < 0.6


# ----------------------------------------------------------------------------- the warning


def _disagreeing(trainer: Trainer) -> None:
    """The policy's evaluate adds 0.05 to every log-prob: its act and evaluate disagree."""
    evaluate = trainer.policy.evaluate

    def shifted(batch):
        log_prob, entropy, value = evaluate(batch)
        return log_prob + 0.05, entropy, value

    trainer.policy.evaluate = shifted


@pytest.mark.parametrize("case", ["lm", "cartpole"])
def test_a_policy_whose_evaluate_disagrees_gets_one_warning_per_run(
    case, gpt2_path, tmp_path, capsys
):
    cfg = text_config(gpt2_path, str(tmp_path), batch_size=64) if case == "lm" else _cartpole()
    _, rows = _iterations(cfg, 2, patch=_disagreeing)
    for m in rows:
        assert m["diagnostics/logprob_drift_max"] == pytest.approx(0.05, abs=1e-5)
        assert m["diagnostics/logprob_drift_p95"] == pytest.approx(0.05, abs=1e-5)
    err = capsys.readouterr().err
    assert err.count("textrlhf: warning: iteration 1: the update's first evaluate disagrees") == 1
    assert "logprob_drift_max=0.05" in err
    for cause in ("bf16 autocast", "changed tokens", "act and evaluate disagree"):
        assert cause in err
    _, rows = _iterations(cfg, 1)  # a consistent policy: no warning
    assert "warning" not in capsys.readouterr().err


def _shift(trainer: Trainer, by: float, after_first_minibatch: bool = False) -> None:
    """The policy's evaluate adds `by` to every log-prob (from epoch 0's second minibatch on)."""
    evaluate = trainer.policy.evaluate

    def shifted(batch):
        log_prob, entropy, value = evaluate(batch)
        if after_first_minibatch and not trainer.ppo.first_epoch.seen.any():
            return log_prob, entropy, value
        return log_prob + by, entropy, value

    trainer.policy.evaluate = shifted


def test_ratios_outside_a_narrow_clip_band_warn_without_drift(capsys):
    # a drift of 8e-4 (< 1e-3) puts every ratio outside a clip band of 5e-4
    cfg = _cartpole()
    cfg["ppo"].update(clip_range=5e-4, anneal_clip=False)
    _, rows = _iterations(cfg, 1, patch=lambda t: _shift(t, 8e-4))
    assert rows[0]["diagnostics/logprob_drift_max"] == pytest.approx(8e-4, abs=1e-6)
    assert rows[0]["diagnostics/outside_clip_band_first_minibatch"] == 1.0
    assert rows[0]["diagnostics/outside_clip_band_epoch0"] > 0.5  # after a step: most still
    err = capsys.readouterr().err
    assert "diagnostics/outside_clip_band_first_minibatch=1 (warns above 0.01)" in err


def test_ratios_moved_by_the_epochs_own_steps_are_logged_but_do_not_warn(capsys):
    """The epoch-0 fraction counts the ratios the earlier minibatches' steps moved (a healthy
    run with several minibatches has some); only the first minibatch's fraction warns."""
    trainer, rows = _iterations(
        _cartpole(), 1, patch=lambda t: _shift(t, 0.5, after_first_minibatch=True)
    )
    first, valid = trainer.ppo.first_epoch, trainer.buffer.valid.reshape(-1)
    later = float((first.seen & valid & ~first.fresh).sum() / (first.seen & valid).sum())
    assert 0.3 < later < 0.7  # the second of 2 shuffled minibatches: ratios e^0.5 = 1.65
    assert rows[0]["diagnostics/logprob_drift_max"] <= 1e-5
    assert rows[0]["diagnostics/outside_clip_band_epoch0"] == pytest.approx(later)
    assert rows[0]["diagnostics/outside_clip_band_first_minibatch"] == 0.0
    assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- statistics only


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}


@pytest.mark.parametrize("case", ["lm", "cartpole"])
def test_diagnostics_change_neither_the_weights_nor_the_metrics(case, gpt2_path, tmp_path):
    runs = {}
    for on in (True, False):
        if case == "lm":
            cfg = text_config(gpt2_path, str(tmp_path))
            cfg["run"]["diagnostics"] = on
        else:
            cfg = _cartpole(diagnostics=on)
        trainer, rows = _iterations(cfg, 2)
        runs[on] = _weights(trainer), rows
    (w_on, rows_on), (w_off, rows_off) = runs[True], runs[False]
    for key in w_on:
        assert torch.equal(w_on[key], w_off[key]), key  # bit for bit
    for m_on, m_off in zip(rows_on, rows_off):
        assert {k for k in m_on if k.startswith("diagnostics/")} and not [
            k for k in m_off if k.startswith("diagnostics/")
        ]
        same = {k: v for k, v in m_on.items() if not k.startswith(("diagnostics/", "time/"))}
        assert same == {k: v for k, v in m_off.items() if not k.startswith("time/")}


def test_metrics_csv_and_tensorboard_have_the_diagnostics(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    header = (finished / "metrics.csv").read_text().splitlines()[0].split(",")
    logged = [k for k in DIAGNOSTICS if k != "kl_token_p95"]  # CartPole: no reference
    assert [k for k in header if k.startswith("diagnostics/")] == [
        f"diagnostics/{k}" for k in logged
    ]
    events = EventAccumulator(str(finished))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"diagnostics/{k}" for k in logged} <= tags
    drift = [e.value for e in events.Scalars("diagnostics/logprob_drift_max")]
    assert len(drift) == 2 and max(drift) <= 1e-5  # 512 steps: 2 iterations


# ----------------------------------------------------------------------------- data-parallel


def test_two_ranks_give_the_diagnostics_of_one_rank(gpt2_ctx64_path, tmp_path):
    """Counts and sums over ranks equal one rank's; the drift max is the max over ranks; the
    p95s are per-rank quantiles averaged (only checked to be in range)."""
    text = text_config(gpt2_ctx64_path, str(tmp_path), batch_size=16)
    text["eval"]["episodes"] = 0
    text["policy"]["top_k"] = 20
    cases = {"cartpole": _cartpole(), "text": text}
    cases["cartpole"]["env"]["num_envs"] = 8
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(TESTS / "dist_worker.py"), "equivalence", str(tmp_path), str(tmp_path / "cases.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for name, cfg in cases.items():
        one = one_iteration(cfg, LOCAL)[1]
        two = json.loads((tmp_path / f"{name}.json").read_text())
        keys = [k for k in one if k.startswith("diagnostics/")]
        assert keys == [k for k in two if k.startswith("diagnostics/")]
        for key in keys:
            if key == "diagnostics/logprob_drift_p95":  # per rank, averaged
                assert 0 <= two[key] <= two["diagnostics/logprob_drift_max"]
                continue
            if key == "diagnostics/kl_token_p95":
                assert two[key] == pytest.approx(one[key], abs=0.05), (name, key)
                continue
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (name, key)
        if name == "text":
            assert one["diagnostics/truncated_mass"] > 0  # top_k 20 of 259 near-uniform tokens
