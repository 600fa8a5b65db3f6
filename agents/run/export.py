"""`textrlhf export RUN OUT [--merge]`: a run's trained actor as a folder other tools load.

- a LoRA run with `--merge`: the adapter merged into the base, a plain transformers folder
  (`AutoModelForCausalLM.from_pretrained(OUT)`);
- a LoRA run without `--merge`: the peft adapter folder (`PeftModel.from_pretrained(base, OUT)`,
  the base being the run's `policy.model_path`); it can also start another run
  (`policy.lora.adapter_path: OUT`);
- a full fine-tuning run: the transformers folder (`--merge` changes nothing).
The tokenizer is written next to the weights. The value head is not exported (it is PPO's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.policies import make_policy
from agents.run import checkpoint as ckpt
from agents.run.config import check_code_references, check_output_dir, load_config
from agents.run.envs import make_eval_env
from agents.run.evaluation import check_checkpoint_config


def export_run(
    run_dir: str | Path,
    out: str | Path,
    merge: bool = False,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Load the run's checkpoint (default: the latest) and write its actor to `out`. Returns
    {"out", "checkpoint", "kind"} with kind "merged", "adapter" or "full"."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml in it")
    cfg = load_config(run_dir / "config.yaml")
    if getattr(cfg.policy, "type", None) != "lm":
        raise ValueError(
            f"export writes language models; run {run_dir} has policy.type {cfg.policy.type!r}"
        )
    check_code_references(cfg, run_dir / "config.yaml", trust_remote_code)
    out = check_output_dir(out, overwrite)
    path = Path(checkpoint) if checkpoint else ckpt.latest_checkpoint(run_dir / "checkpoints")
    meta, tensors = ckpt.read_checkpoint(path)
    check_checkpoint_config(cfg, meta, path)
    env = make_eval_env(cfg, 1)  # for the spaces the policy is built for
    try:
        policy = make_policy(cfg.policy, env.single_observation_space, env.single_action_space)
    finally:
        env.close()
    ckpt.load_policy_weights(policy, tensors, path)
    lora = cfg.policy.lora is not None
    policy.save_pretrained(out, merge=merge)
    kind = ("merged" if merge else "adapter") if lora else "full"
    return {"out": str(out), "checkpoint": str(path), "kind": kind}
