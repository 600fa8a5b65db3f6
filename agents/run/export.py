"""`textrlhf export RUN OUT [--merge]`: a run's trained actor as a folder other tools load.

- a LoRA run with `--merge`: the adapter merged into the base, a plain transformers folder
  (`AutoModelForCausalLM.from_pretrained(OUT)`);
- a LoRA run without `--merge`: the peft adapter folder (`PeftModel.from_pretrained(base, OUT)`,
  the base being the run's `policy.model_path`); it can also start another run
  (`policy.lora.adapter_path: OUT`);
- a full fine-tuning run: the transformers folder (`--merge` changes nothing).
The tokenizer is written next to the weights. The value head is not exported (it is PPO's).

OUT is written as a whole (`agents.run.files.replace_folder`): into a temp folder next to it,
then swapped in, so `--overwrite` never leaves an earlier export's files (an `adapter_config.json`
beside a merged model) and a failed export leaves the old OUT as it was. OUT may not be, or hold,
a folder the run reads (its base model, starting adapter, critic or reward model, its own run
folder): replacing it would silently change the run's later evaluations and resumes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agents.policies.hf import DEFAULT_MODEL_PATH
from agents.run.evaluation import load_run_policy, read_run_config
from agents.run.files import replace_folder
from agents.run.output_dir import check_output_dir


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
    cfg = read_run_config(run_dir, None, trust_remote_code)
    if cfg.policy.type != "lm":
        raise ValueError(
            f"export writes language models; run {run_dir} has policy.type {cfg.policy.type!r}"
        )
    check_not_read_by_run(Path(out), cfg, run_dir)
    out = check_output_dir(out, overwrite)
    policy, path = load_run_policy(cfg, run_dir, checkpoint)
    lora = cfg.policy.lora is not None
    replace_folder(out, lambda tmp: policy.save_pretrained(tmp, merge=merge))
    kind = ("merged" if merge else "adapter") if lora else "full"
    return {"out": str(out), "checkpoint": str(path), "kind": kind}


def _paths_in(value: Any, key: str) -> Iterator[tuple[str, Path]]:
    """(config key, path) for every string in a config value that names an existing file or
    folder (a reward model, a tokenizer, a prompt file in env.kwargs)."""
    if isinstance(value, (str, os.PathLike)) and str(value) and os.path.exists(value):
        yield key, Path(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _paths_in(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _paths_in(v, f"{key}[{i}]")


def check_not_read_by_run(out: Path, cfg: Any, run_dir: Path) -> None:
    """Refuse an OUT that is, or contains, something the run reads: its run folder, its model
    folders (`policy.*` paths; the default model for `model_path: null`) and the files and
    folders named in `env.kwargs` / `eval.env_kwargs`. Exporting there (with --overwrite) would
    replace the run's own inputs, and its later evaluations would silently change."""
    read = [("the run folder", run_dir)]
    policy = cfg.policy.model_dump()
    if policy.get("model_path") is None:
        read.append(("policy.model_path (null: the default model)", DEFAULT_MODEL_PATH))
    read += _paths_in(policy, "policy")
    read += _paths_in(cfg.env.kwargs, "env.kwargs")
    read += _paths_in(cfg.eval.env_kwargs, "eval.env_kwargs")
    target = out.resolve()
    for key, path in read:
        resolved = path.resolve()
        if target == resolved or target in resolved.parents:
            inside = "" if target == resolved else f" (it holds {path})"
            raise ValueError(
                f"export refuses to write {out}: run {run_dir} reads it{inside} as {key}; "
                "replacing it would change the run's own inputs and silently change its later "
                "evaluations and resumes. Choose another output folder"
            )
