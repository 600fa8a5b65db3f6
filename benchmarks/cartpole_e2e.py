"""What a CartPole user waits for: the whole `textrlhf train configs/cartpole.yaml` process, the
same from Python (`agents.PPO(...).learn` + `evaluate_policy` + `save`), and the equivalent
stable-baselines3 script, each a fresh Python process, alternately.

    python benchmarks/cartpole_e2e.py [--rounds 3]

Both sides: CartPole-v1, 100k steps, the zoo hyperparameters of configs/cartpole.yaml (8 envs,
n_steps 32, batch 256, 20 epochs, ...), 1 torch thread, a final evaluation of 10 deterministic
episodes, and their outputs written to a temporary folder (ours: run folder with TensorBoard,
metrics.csv, summary.json, training_curves.png; SB3: its TensorBoard log and the saved model).
Prints per-side medians of the whole process and its split (interpreter + imports, training,
the rest: setup, evaluation, plots and files), and the ratios ours / SB3 (< 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The SB3 script a user would write for the same experiment (hyperparameters: configs/cartpole.yaml).
SB3_SCRIPT = """
import sys, time, json
t0 = time.perf_counter()
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
t_import = time.perf_counter()
torch.set_num_threads(1)
out = sys.argv[1]
env = make_vec_env("CartPole-v1", n_envs=8, seed=1)
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98,
            gae_lambda=0.8, learning_rate=lambda f: 1e-3 * f, clip_range=lambda f: 0.2 * f,
            ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
            policy_kwargs=dict(net_arch=[64, 64], activation_fn=torch.nn.Tanh),
            tensorboard_log=out, seed=1, device="cpu")
t_learn = time.perf_counter()
model.learn(100_000, progress_bar=True)
t_learned = time.perf_counter()
mean, std = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=10_001),
                            n_eval_episodes=10, deterministic=True)
model.save(out + "/ppo_cartpole")
print(json.dumps({"import": t_import - t0, "train": t_learned - t_learn, "eval_return": mean}))
"""

# The same from our Python API: PPO("mlp", ...) with nothing else set uses the MLP's defaults,
# which are configs/cartpole.yaml's; learn writes nothing to disk unless asked, save writes a folder
API_SCRIPT = """
import sys, time, json
t0 = time.perf_counter()
import gymnasium as gym
from agents import PPO, evaluate_policy
t_import = time.perf_counter()
out = sys.argv[1]
model = PPO("mlp", "CartPole-v1", seed=1)
t_learn = time.perf_counter()
model.learn(100_000, progress_bar=True)
t_learned = time.perf_counter()
mean, std = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=10, seed=10_001)
model.save(out + "/ppo_cartpole")
print(json.dumps({"import": t_import - t0, "train": t_learned - t_learn, "eval_return": mean}))
"""

OURS_IMPORT = "import agents.cli"


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def import_time(module_code: str) -> float:
    """Seconds for a fresh interpreter to start and run `module_code` (imports only)."""
    return timed([sys.executable, "-c", module_code], REPO)[0]


def script_side(times: dict[str, list[float]], script: str, out: Path, imports: str) -> None:
    """One round of a side that is a Python script printing its JSON timings (ours from the
    API, SB3): the whole process, its training, its eval return and its imports alone."""
    out.mkdir()
    wall, stdout = timed([sys.executable, "-c", script, str(out)], REPO)
    result = json.loads(stdout.strip().splitlines()[-1])
    times["total"].append(wall)
    times["train"].append(result["train"])
    times["return"].append(result["eval_return"])
    times["imports"].append(import_time(imports))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ours: dict[str, list[float]] = {"total": [], "imports": [], "train": [], "return": []}
    api: dict[str, list[float]] = {"total": [], "imports": [], "train": [], "return": []}
    sb3: dict[str, list[float]] = {"total": [], "imports": [], "train": [], "return": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            run_root = Path(tmp) / f"ours{r}"
            wall, _ = timed(
                [sys.executable, "-m", "agents.cli", "train", "configs/cartpole.yaml",
                 "--set", f"run.root={run_root}", "run.progress=true"],
                REPO,
            )  # fmt: skip
            summary = json.loads(next(run_root.glob("*/summary.json")).read_text())
            ours["total"].append(wall)
            ours["train"].append(summary["wall_time_s"])
            ours["return"].append(summary["final_return"])
            ours["imports"].append(import_time(OURS_IMPORT))

            script_side(api, API_SCRIPT, Path(tmp) / f"api{r}", "import gymnasium, agents")
            script_side(sb3, SB3_SCRIPT, Path(tmp) / f"sb3{r}", "import torch, stable_baselines3")
            print(
                f"round {r + 1}: CLI {ours['total'][-1]:.1f} s (train {ours['train'][-1]:.1f}), "
                f"API {api['total'][-1]:.1f} s (train {api['train'][-1]:.1f}), "
                f"SB3 {sb3['total'][-1]:.1f} s (train {sb3['train'][-1]:.1f})",
                flush=True,
            )
    med = {side: {k: statistics.median(v) for k, v in d.items()} for side, d in
           (("ours", ours), ("api", api), ("sb3", sb3))}  # fmt: skip
    print("\nmedians over rounds (s)     whole process   interpreter+imports   training   rest")
    for side in ("ours", "api", "sb3"):
        m = med[side]
        rest = m["total"] - m["imports"] - m["train"]
        print(
            f"  {side:5s}                      {m['total']:6.1f}          {m['imports']:6.1f}"
            f"          {m['train']:6.1f}   {rest:5.1f}   (eval return {m['return']:.0f})"
        )
    for side, name in (("ours", "textrlhf train"), ("api", "agents.PPO")):
        print(f"{name} / SB3, whole process: {med[side]['total'] / med['sb3']['total']:.2f}x, "
              f"training only: {med[side]['train'] / med['sb3']['train']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
