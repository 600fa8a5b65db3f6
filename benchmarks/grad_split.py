"""Gradient-norm split of the first PPO minibatch: how much of the shared trunk's gradient comes
from the policy loss and how much from vf_coef x the value loss.

    python benchmarks/grad_split.py [--config configs/text_edit_distance.yaml] [--set k=v ...]

Runs the first rollout of the config (score normalization, KL penalty and GAE as the trainer does
them), then back-propagates the policy loss and vf_coef x value loss of the first minibatch
separately and prints the L2 norm of each gradient over the LM trunk (every parameter but the
value head), over the value head, and of their sum (what `max_grad_norm` clips).
"""

from __future__ import annotations

import argparse

import torch

from agents.core.kl import apply_kl_penalty
from agents.run.config import load_config
from agents.run.trainer import Trainer


def gradients(trainer: Trainer, vf_coef: float) -> dict[str, torch.Tensor]:
    """Flat gradients (trunk, value head) of policy loss + vf_coef x value loss on the first
    minibatch (no entropy bonus in these configs)."""
    ppo, buf = trainer.ppo, trainer.buffer
    mb = next(iter(buf.minibatches(trainer.cfg.ppo.batch_size, trainer.policy.is_sequence_policy)))
    clip = trainer.cfg.ppo.clip_range
    saved = ppo.cfg.vf_coef
    ppo.cfg.vf_coef = vf_coef
    try:
        loss, _ = ppo.loss(mb, ppo.prepare(mb, clip), clip)
    finally:
        ppo.cfg.vf_coef = saved
    trainer.policy.zero_grad(set_to_none=True)
    loss.backward()
    parts: dict[str, list[torch.Tensor]] = {"trunk": [], "value_head": []}
    for name, p in trainer.policy.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        parts["value_head" if name.startswith("value_head") else "trunk"].append(grad.reshape(-1))
    return {k: torch.cat(v).clone() for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/text_edit_distance.yaml")
    parser.add_argument("--set", nargs="*", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.set, "eval.episodes=0"])
    trainer = Trainer(cfg)
    trainer.collector.collect()
    buf = trainer.buffer
    trainer.score_normalizer(buf.rewards, buf.terminated | buf.truncated, buf.valid)
    if trainer.reference is not None:
        apply_kl_penalty(buf, trainer.policy, trainer.reference, cfg.kl.beta, cfg.kl.estimator)
    buf.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    print(f"{args.config} {' '.join(args.set)}")
    torch.manual_seed(0)
    policy_only = gradients(trainer, 0.0)  # grads are linear in the loss: total - policy = value
    torch.manual_seed(0)
    total = gradients(trainer, cfg.ppo.vf_coef)
    value = {k: total[k] - policy_only[k] for k in total}
    for name, g in (
        ("policy", policy_only),
        (f"{cfg.ppo.vf_coef} x value", value),
        ("total", total),
    ):
        print(
            f"  {name:12s}: trunk grad norm {float(g['trunk'].norm()):.3f}, "
            f"value head {float(g['value_head'].norm()):.3f}"
        )
    trainer.close()


if __name__ == "__main__":
    main()
