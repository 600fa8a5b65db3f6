"""The RLHF pipeline end to end: SFT -> preference pairs -> reward model -> PPO.

    python examples/rlhf_pipeline.py                 # full run (~6 minutes on 2 cores before the
                                                     # RM's pairs and steps doubled; not re-timed)
    python examples/rlhf_pipeline.py --quick         # smoke run, ~1-2 minutes
    python examples/rlhf_pipeline.py --nokl          # also PPO with beta = 0 and the plot (~8 min)
    python examples/rlhf_pipeline.py --overwrite     # replace an existing --out folder

Each stage writes its own folder under --out (default runs/rlhf_pipeline):

    sft/           the SFT model                       agents.rlhf.sft.main(configs/sft_tiny.yaml)
    preferences/   pairs sampled from it, gold labels  agents.rlhf.preferences.generate_preferences
    rm/            the reward model (Bradley-Terry)    agents.rlhf.reward_model.main(configs/rm_tiny.yaml)
    ppo/           PPO against the reward model        agents.train(configs/text_reward_model.yaml)
    ppo_nokl/      (--nokl) the same with beta = 0     configs/text_reward_model_nokl.yaml
    results.json   the final table; rlhf_proxy_vs_gold.png with --nokl

The gold reward is the synthetic labeller's rule (agents/rlhf/preferences.py); the proxy is the learned
reward model. "Held-out" numbers are measured on test-split prompts that no stage trained on:
one sampled response per prompt, mean gold, mean proxy, and the KL to the SFT model (sum over the
response of log pi - log pi_sft, averaged over prompts).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import torch

import agents.rlhf.reward_model
import agents.rlhf.sft
from agents import PPO, load_config, train
from agents.policies.hf import load_causal_lm, without_dropout
from agents.policies.lm import LMPolicy
from agents.rlhf.preferences import env_lengths, evaluate_gold_proxy, generate_preferences
from agents.run.files import atomic_file, atomic_write_text
from agents.run.output_dir import check_output_dir
from textenv import make_task

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ("sft", "preferences", "rm", "ppo", "ppo_nokl", "results.json", "rlhf_proxy_vs_gold.png")
GOLD, PROXY = "episode/reward_components/gold", "episode/reward_components/reward_model"


def ppo_stage(config: str, out: Path, sft: Path, rm: Path, overrides: list[str]) -> PPO:
    """Train PPO from `config` with the pipeline's own SFT model and reward model (the
    `textrlhf train` path, `agents.train`); returns the trained model."""
    reward = (
        f"{{weighted_sum: [{{name: reward_model, path: '{rm}', weight: 1.0}}, "
        "{name: gold, weight: 0.0}]}"
    )
    run = train(
        REPO / config,
        [f"policy.model_path={sft}", f"env.kwargs.reward_fn={reward}", f"run.root={out.parent}"]
        + overrides,
        name=out.name,
    )
    return PPO.load(run.dir)


def plot_proxy_vs_gold(runs: dict[str, Path], path: Path, sft_gold: float | None = None) -> None:
    """Proxy (reward model), gold, and their gap for the training episodes, against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, run in runs.items():
        with open(run / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get(GOLD)]
        steps = [int(r["step"]) for r in rows]
        proxy, gold = [float(r[PROXY]) for r in rows], [float(r[GOLD]) for r in rows]
        axes[0].plot(steps, proxy, label=label)
        axes[1].plot(steps, gold, label=label)
        axes[2].plot(steps, [p - g for p, g in zip(proxy, gold)], label=label)
    if sft_gold is not None:
        axes[1].axhline(sft_gold, color="gray", ls="--", lw=1, label="SFT (held-out)")
    titles = ("proxy: reward-model score", "gold reward", "gap: proxy - gold")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("env steps")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/rlhf_pipeline", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run of every stage")
    parser.add_argument("--nokl", action="store_true", help="also run PPO with beta = 0")
    parser.add_argument("--eval-prompts", type=int, default=256, help="held-out prompts")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = check_output_dir(Path(args.out).resolve(), args.overwrite)
    for name in OUTPUTS:  # every stage starts empty; delete only what this script writes
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    quick = args.quick
    timings: dict[str, float] = {}

    start = time.perf_counter()
    sft = agents.rlhf.sft.main(
        REPO / "configs/sft_tiny.yaml",
        [f"output_dir={out / 'sft'}"] + (["train.steps=60", "eval.n=32"] if quick else []),
    )
    timings["sft"] = time.perf_counter() - start

    start = time.perf_counter()
    prefs = generate_preferences(
        out / "preferences", model_path=sft, task="reverse",
        n_train=600 if quick else 8000, n_test=200 if quick else 500, noise=0.1, seed=0,
    )  # fmt: skip
    timings["preferences"] = time.perf_counter() - start

    start = time.perf_counter()
    rm = agents.rlhf.reward_model.main(
        REPO / "configs/rm_tiny.yaml",
        [
            f"sft_path={sft}",
            f"train_file={prefs['train']['file']}",
            f"eval_file={prefs['test']['file']}",
            f"output_dir={out / 'rm'}",
        ]
        + (["train.steps=40", "train.eval_every=0"] if quick else []),
    )
    rm_metrics = json.loads((rm / "rm_metrics.json").read_text())
    timings["reward_model"] = time.perf_counter() - start

    prompts = [r["prompt"] for r in make_task("reverse", "test", n=args.eval_prompts, seed=1)]
    reference = without_dropout(load_causal_lm(sft))
    # every policy is evaluated at the lengths the PPO configs train with (same in both configs)
    lengths = env_lengths(load_config(REPO / "configs/text_reward_model.yaml").env.kwargs)
    policy_sft = LMPolicy.from_pretrained(sft, max_sequence_length=sum(lengths.values()))
    before = evaluate_gold_proxy(
        policy_sft, prompts, rm_path=rm, reference=reference, seed=1, **lengths
    )

    ppo_overrides = ["total_timesteps=5120"] if quick else []
    results = {}
    runs = {"KL target 3": ("configs/text_reward_model.yaml", out / "ppo")}
    if args.nokl:
        runs["beta=0"] = ("configs/text_reward_model_nokl.yaml", out / "ppo_nokl")
    for label, (config, folder) in runs.items():
        start = time.perf_counter()
        model = ppo_stage(config, folder, sft, rm, ppo_overrides)
        timings[f"ppo {label}"] = time.perf_counter() - start
        assert env_lengths(model.cfg.env.kwargs) == lengths
        results[label] = evaluate_gold_proxy(
            model.policy, prompts, rm_path=rm, reference=reference, seed=1, **lengths
        )
    if args.nokl:
        plot_proxy_vs_gold(
            {k: v[1] for k, v in runs.items()}, out / "rlhf_proxy_vs_gold.png", before["gold"]
        )

    print(
        f"\nRLHF pipeline ({'quick' if quick else 'full'}), held-out: {len(prompts)} test prompts"
    )
    print(f"reward model: held-out accuracy vs gold {rm_metrics['eval_accuracy']:.3f} "
          f"({rm_metrics['eval_pairs']} pairs), loss {rm_metrics['eval_loss']:.3f}")  # fmt: skip
    print(f"{'policy':<18}{'gold':>8}{'proxy':>8}{'KL':>8}{'chars':>8}{'vowels':>8}")
    rows = {"SFT": before, **{f"PPO {k}": v for k, v in results.items()}}
    for name, r in rows.items():
        print(
            f"{name:<18}{r['gold']:>8.3f}{r['proxy']:>8.3f}{r['kl']:>8.2f}"
            f"{r['response_chars']:>8.2f}{r['vowel_share']:>8.2f}"
        )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    summary = {
        "quick": quick,
        "eval_prompts": len(prompts),
        "rm_eval_accuracy": rm_metrics["eval_accuracy"],
        "rm_eval_loss": rm_metrics["eval_loss"],
        "preferences": prefs,
        "policies": rows,
        "seconds": timings,
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
