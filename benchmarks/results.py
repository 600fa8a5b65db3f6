"""Re-run a named experiment family and rewrite its results page and data files under
docs/results/, so that no published number outlives the code that produced it.

    python benchmarks/results.py --list                   # the families and their commands
    python benchmarks/results.py lora --dry-run           # what would run, and what it rewrites
    python benchmarks/results.py lora [--work DIR]        # run it (hours for most families)

Each family is a list of steps (`textrlhf sft` / `rm` preparations, then `textrlhf compare` runs
into a work folder, `runs/results/<family>` by default) and a page:
- "task" families: `benchmarks/task_results.py` writes `docs/results/<page>/README.md` (the
  table of start, end and gain per seed, with the code version, the machine and the commands)
  and copies each compare folder's compare.md / .json / .png next to it;
- "compare" families: the compare folder's compare.md / .json / .png are copied into
  `docs/results/<page>/` (compare.md starts with the command that made it).
Hand-written analysis on a page (paragraphs under the table) is not regenerated: re-read it
against the new numbers. tests/test_readme_results.py then checks the README's table against
the rewritten pages.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
COMPARE_FILES = ("compare.md", "compare.json", "compare.png")


@dataclass(frozen=True)
class Compare:
    """One `textrlhf compare` run: its folder name on the page, its configs and arguments."""

    folder: str
    configs: tuple[str, ...]
    args: tuple[str, ...] = ("--seeds", "5", "--jobs", "1", "--no-sb3")

    def argv(self, out: Path) -> list[str]:
        return ["textrlhf", "compare", *self.configs, *self.args, "--out", str(out)]


@dataclass(frozen=True)
class Family:
    """A results page and the runs behind it."""

    title: str
    page: str  # the folder under docs/results/
    compares: tuple[Compare, ...]
    kind: str = "task"  # "task": task_results.py writes README.md; "compare": compare.md as is
    prepare: tuple[tuple[str, ...], ...] = field(default=())


FAMILIES: dict[str, Family] = {
    "edit_distance": Family(
        "PPO on the edit-distance task, 5 seeds",
        "edit_distance_seeds_400",
        (Compare(".", ("configs/text_edit_distance.yaml",), ("--seeds", "5", "--jobs", "2")),),
        kind="compare",
    ),
    "critic_free": Family(
        "GRPO and RLOO at the PPO config's batch shape and schedule, 5 seeds",
        "critic_free_400",
        (
            Compare("cmp_grpo", ("configs/text_edit_distance_grpo.yaml",)),
            Compare("cmp_rloo", ("configs/text_edit_distance_rloo.yaml",)),
        ),
    ),
    "reinforce_pp": Family(
        "REINFORCE++ on the edit-distance task, 5 seeds (untuned)",
        "reinforce_pp",
        (
            Compare(
                "reinforce_pp",
                ("configs/text_edit_distance_reinforce_pp.yaml",),
                ("--seeds", "5", "--jobs", "2"),
            ),
        ),
    ),
    "lora": Family(
        "LoRA r 8 on the edit-distance task, 5 seeds",
        "lora",
        (Compare("cmp_lora", ("configs/text_edit_distance_lora.yaml",)),),
    ),
    "repetition": Family(
        "The repetition task: PPO, GRPO and RLOO, 5 seeds each",
        "repetition_5",
        (
            Compare("cmp_rep", ("configs/text_repetition.yaml",)),
            Compare("cmp_rep_grpo", ("configs/text_repetition_grpo.yaml",)),
            Compare("cmp_rep_rloo", ("configs/text_repetition_rloo.yaml",)),
        ),
    ),
    "rlhf": Family(
        "The RLHF pipeline on the test split: PPO, GRPO and RLOO against the reward model",
        "algorithms_rm_test",
        (
            Compare(
                ".",
                (
                    "configs/text_reward_model.yaml",
                    "configs/text_reward_model_grpo.yaml",
                    "configs/text_reward_model_rloo.yaml",
                ),
                (
                    "--seeds",
                    "5",
                    "--jobs",
                    "1",
                    "--no-sb3",
                    "--set",
                    "eval.env_kwargs.split=test",
                    "eval.every=122880",
                    "eval.episodes=256",
                ),
            ),
        ),  # fmt: skip
        kind="compare",
        prepare=(("textrlhf", "rm", "configs/rm_tiny.yaml"),),
    ),
    "calc_tool": Family(
        "PPO teaches the tiny model to use the calc tool, 5 seeds",
        "calc_tool",
        (Compare("calc_tool", ("configs/text_calc_tool.yaml",), ("--seeds", "5", "--jobs", "2")),),
    ),
    "retry": Family(
        "Two turns: feedback that says what was wrong, and its control, 5 seeds",
        "retry",
        (Compare("cmp_retry", ("configs/text_retry.yaml", "configs/text_retry_constant.yaml")),),
    ),
    "rg": Family(
        "reasoning-gym tasks: PPO from an SFT start, held-out test questions, 5 seeds",
        "rg",
        (
            Compare("rg_spell_backward", ("configs/rg_spell_backward.yaml",), ("--seeds", "5")),
            Compare("rg_letter_counting", ("configs/rg_letter_counting.yaml",), ("--seeds", "5")),
        ),
        prepare=(("textrlhf", "sft", "configs/sft_rg.yaml", "--overwrite"),),
    ),
    "ta": Family(
        "TextArena GuessTheNumber: a multi-turn policy from an SFT start, 5 seeds",
        "ta",
        (Compare("ta_compare", ("configs/ta_guess_the_number.yaml",), ("--seeds", "5")),),
        prepare=(("textrlhf", "sft", "configs/sft_ta_guess.yaml", "--overwrite"),),
    ),
    "classic_control": Family(
        "Our PPO vs Stable-Baselines3 PPO on Acrobot-v1 and Pendulum-v1, 20 seeds",
        "classic_control",
        (
            Compare(
                ".",
                ("configs/acrobot.yaml", "configs/pendulum.yaml"),
                ("--seeds", "20", "--threshold", "Pendulum-v1=-200"),
            ),
        ),
        kind="compare",
    ),
    "spaces": Family(
        "FrozenLake-v1 and Blackjack-v1 vs Stable-Baselines3, 5 seeds",
        "spaces",
        (Compare(".", ("configs/frozenlake.yaml", "configs/blackjack.yaml"), ("--seeds", "5")),),
        kind="compare",
    ),
}


def plan(name: str, work: Path) -> list[list[str]]:
    """The commands that re-run family `name` into `work` and rewrite its page, in order."""
    family = FAMILIES[name]
    page = RESULTS / family.page
    commands = [list(step) for step in family.prepare]
    folders = []
    for compare in family.compares:
        out = work / (name if compare.folder == "." else compare.folder)
        folders.append(out)
        commands.append(compare.argv(out))
    if family.kind == "task":
        shown = "\n".join(
            shlex.join(c.argv(Path("OUT") if len(family.compares) == 1 else Path(c.folder.upper())))
            for c in family.compares
        )
        prep = "\n".join(shlex.join(step) for step in family.prepare)
        commands.append(
            [
                sys.executable, str(REPO / "benchmarks" / "task_results.py"),
                "--title", family.title, "--command", "\n".join(filter(None, [prep, shown])),
                "--out", str(page), *map(str, folders),
            ]
        )  # fmt: skip
    else:
        for folder in folders:
            commands.append(["copy", *(str(folder / f) for f in COMPARE_FILES), str(page)])
    return commands


def run(commands: list[list[str]]) -> None:
    """Run the plan from the repository root; `copy` steps copy files into a folder."""
    for argv in commands:
        print("+", shlex.join(argv), flush=True)
        if argv[0] == "copy":
            Path(argv[-1]).mkdir(parents=True, exist_ok=True)
            for source in argv[1:-1]:
                if Path(source).exists():
                    shutil.copy(source, argv[-1])
        else:
            subprocess.run(argv, cwd=REPO, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", nargs="?", choices=sorted(FAMILIES), help="the family to re-run")
    parser.add_argument("--list", action="store_true", help="list the families and their commands")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument(
        "--work", type=Path, help="the folder for the runs (default: runs/results/FAMILY)"
    )
    args = parser.parse_args(argv)
    if args.list or args.family is None:
        for name, family in FAMILIES.items():
            print(f"{name}: {family.title} -> docs/results/{family.page}/")
            for step in family.prepare:
                print(f"    {shlex.join(step)}")
            for compare in family.compares:
                print(f"    {shlex.join(compare.argv(Path('OUT')))}")
        return 0
    work = args.work or REPO / "runs" / "results" / args.family
    commands = plan(args.family, work.resolve())
    if args.dry_run:
        print("\n".join(shlex.join(c) for c in commands))
        return 0
    run(commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
