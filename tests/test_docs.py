"""Every Python and shell block of the README and the guides is exercised: documented code and
commands cannot rot.

Python blocks (```python) run. The default suite caps `PPO.learn` at two iterations (the code
path, not the result); the slow suite runs them as written.

Shell blocks (```bash, ```sh, ```shell) are checked command by command in the default suite,
without training anything:
- `NAME=value` prefixes (`PYTHONPATH=examples/own_model textrlhf ...`) are set for the command;
- `textrlhf ...` (also after `torchrun ... -m agents.cli`): the arguments parse with the real
  parser, and every config they name loads and validates with the command's `--set` overrides;
- `python FILE ...` and `python -m MODULE ...`: the file or module exists; a `python - <<'X'`
  heredoc compiles;
- `pip`, `git`, `tensorboard`, `ruff`, `bash`, `cd`: not run (installers, servers, CI itself).
The slow suite runs every `textrlhf train`, `compare`, `sft` and `rm` command of the blocks for
real, with a short budget (`short_run`: one PPO iteration, one seed, two SFT / reward-model
steps) and its outputs in a temporary folder; commands that need an earlier run's folder
(`eval`, `export`, `--resume`), several processes (`--nproc`, torchrun) or a placeholder are only
checked. `python` scripts are only checked here (tests/test_env_examples.py runs the examples).

A block that is not meant to run (a fragment, a sketch, one that needs a GPU or a server) has
the line `<!-- no-test: why -->` right before its fence. Output and YAML use other fence
languages (text, yaml).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO

from agents.api import PPO

# the README and the guides: every docs page but the results, the generated reference and the
# changelog
PAGES = [
    "README.md",
    *sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "docs").rglob("*.md")
        if not {"results", "reference"} & set(p.relative_to(REPO / "docs").parts)
        and p.name != "changelog.md"
    ),
]
FENCE = re.compile(
    r"(?P<marker><!-- no-test[^>]*-->\n)?^(?P<indent> *)```(?P<lang>[a-z]*)\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)
SHELLS = ("bash", "sh", "shell")
NOT_RUN = {"pip", "git", "tensorboard", "ruff", "bash", "cd"}
# files a documented command names as the user's own (a placeholder, not a repository file)
USER_FILES = {"my_run.yaml", "configs/my_env.yaml", "CONFIG"}


@dataclass
class Block:
    where: str
    lang: str
    code: str


def blocks(langs: tuple[str, ...]) -> list[Block]:
    """The fenced blocks of `langs` in PAGES, without those marked no-test."""
    found = []
    for page in PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        for i, m in enumerate(FENCE.finditer(text)):
            if m["lang"] in langs and not m["marker"]:
                code = "\n".join(line[len(m["indent"]) :] for line in m["code"].splitlines())
                found.append(Block(f"{page}:{i}", m["lang"], code + "\n"))
    return found


def ids(found: list[Block]) -> list[str]:
    return [b.where for b in found]


# ----------------------------------------------------------------------------- python blocks

PYTHON = blocks(("python",))


def run_block(code: str, folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the docs speak of configs/ as a user in the repo does
    code = code.replace('"cartpole_model"', repr(str(folder / "cartpole_model")))
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("block", PYTHON, ids=ids(PYTHON))
def test_a_documented_block_runs(block, tmp_path, monkeypatch):
    learn = PPO.learn

    def short_learn(self, total_timesteps, *args, **kwargs):
        per = self.trainer.steps_per_iteration
        return learn(self, min(total_timesteps, 2 * per), *args, **kwargs)

    monkeypatch.setattr(PPO, "learn", short_learn)
    run_block(block.code, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=ids(PYTHON))
def test_a_documented_block_runs_as_written(block, tmp_path, monkeypatch):
    run_block(block.code, tmp_path, monkeypatch)


# ----------------------------------------------------------------------------- shell blocks

SHELL = blocks(SHELLS)


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block as argv lists: continuation lines joined, comments
    dropped, `&&` / `;` lists split, `for ...; do CMD; done` bodies taken once with the loop
    variable at its first value, `NAME=value` assignments substituted, heredocs kept as one
    ["<<", body] command after the command that reads them."""
    out: list[list[str]] = []
    variables: dict[str, str] = {}
    lines = code.replace("\\\n", " ").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc[1]:
                body.append(lines[i])
                i += 1
            i += 1
            line = line[: heredoc.start()]
        loop = re.match(r"\s*for (\w+) in (\S+)[^;]*; do (.*); done", line)
        if loop:
            variables[loop[1]] = loop[2]
            line = loop[3]
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&")
        lexer.whitespace_split = True
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", ";"):
                argv.append(token)
            elif len(argv) == 1 and re.fullmatch(r"\w+=.*", argv[0]):
                name, _, value = argv[0].partition("=")
                variables[name] = value
                argv = []
            elif argv:
                out.append(argv)
                argv = []
        if heredoc:
            out.append(["<<", "\n".join(body)])
    return out


def check_textrlhf(argv: list[str]) -> None:
    """Parse `textrlhf ARGV` with the real parser and validate the configs it names."""
    from agents.cli import build_parser
    from agents.rlhf import reward_model, sft
    from agents.run.config import load_config

    args = build_parser().parse_args(argv)  # SystemExit (exit 2) on a bad argument
    overrides = list(getattr(args, "set", []) or [])
    configs = {"train": [getattr(args, "config", None)], "compare": getattr(args, "targets", [])}
    for name in configs.get(args.command, []):
        if name in USER_FILES or not name.endswith((".yaml", ".yml")):
            continue  # the user's own file, or a Gymnasium id (compare)
        assert (REPO / name).is_file(), f"{name} does not exist"
        load_config(REPO / name, overrides)
    if args.command in ("sft", "rm"):
        module = sft if args.command == "sft" else reward_model
        placeholders = [o for o in overrides if re.search(r"=[A-Z_0-9]+$", o)]
        module.load_config(REPO / args.config, [o for o in overrides if o not in placeholders])


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """`NAME=value ... command args` -> ({NAME: value}, [command, args...])."""
    env = {}
    while len(argv) > 1 and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        name, _, value = argv[0].partition("=")
        env[name] = value
        argv = argv[1:]
    return env, argv


def check_command(argv: list[str]) -> None:
    argv = split_env(argv)[1]
    program = argv[0]
    if program == "<<":
        compile(argv[1], "<heredoc>", "exec")
    elif program in NOT_RUN:
        pass
    elif program == "textrlhf":
        check_textrlhf(argv[1:])
    elif program == "torchrun":
        assert "-m" in argv and argv[argv.index("-m") + 1] == "agents.cli", argv
        check_textrlhf(argv[argv.index("-m") + 2 :])
    elif program == "python":
        if argv[1] == "-m":
            import importlib.util

            assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
        elif argv[1] != "-":
            assert (REPO / argv[1]).is_file(), f"{argv[1]} does not exist"
    else:
        raise AssertionError(f"a documented command this test does not know: {argv}")


@pytest.mark.parametrize("block", SHELL, ids=ids(SHELL))
def test_a_documented_command_parses_and_its_configs_load(block, monkeypatch):
    monkeypatch.chdir(REPO)
    for argv in commands(block.code):
        try:
            check_command(argv)
        except SystemExit as err:  # argparse
            raise AssertionError(f"{block.where}: {shlex.join(argv)} does not parse") from err
        except (AssertionError, ValueError) as err:
            raise AssertionError(f"{block.where}: {shlex.join(argv)}: {err}") from err


RUNNABLE = ("train", "compare", "sft", "rm")
SHORT_RUNS = [
    (block.where, argv)
    for block in SHELL
    for argv in (split_env(a)[1] for a in commands(block.code))
    if argv[0] == "textrlhf"
    and argv[1] in RUNNABLE
    and not {"--resume", "--nproc"} & set(argv)
    and not USER_FILES & set(argv)
    and not any(re.search(r"=[A-Z][A-Z_0-9]+$", a) for a in argv)  # a placeholder value
]


def short_run(argv: list[str], folder: Path) -> list[str]:
    """`textrlhf CMD ...` with a short budget and its outputs in `folder`: one PPO iteration
    (compare: one seed, the largest config's iteration), two SFT / reward-model steps."""
    from agents.cli import build_parser
    from agents.run.config import load_config

    args = build_parser().parse_args(argv[1:])
    argv = [str(REPO / a) if (REPO / a).is_file() else a for a in argv]  # configs, from anywhere
    if args.command in ("train", "compare"):
        names = [args.config] if args.command == "train" else args.targets
        rollouts = [
            (lambda c: c.ppo.n_steps * c.env.num_envs)(load_config(REPO / n, args.set))
            for n in names
            if n.endswith(".yaml")
        ]
        short = [f"total_timesteps={max(rollouts)}", "eval.episodes=2", "eval.every=0"]
        short += [f"run.root={folder / 'runs'}", "run.progress=false"]
        if args.command == "compare":
            argv += ["--seeds", "1", "--jobs", "1", "--out", str(folder / "compare")]
        return [*argv[1:], "--set", *short]
    steps = ["train.steps=2", "train.warmup_steps=0", f"output_dir={folder / args.command}"]
    if args.command == "sft":
        steps += ["n_per_task=8", "eval.n=4"]
    else:
        steps += ["train.eval_every=0"]
    return [*argv[1:], "--overwrite", "--set", *steps]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "argv"), SHORT_RUNS, ids=[f"{w}:{' '.join(a[1:3])}" for w, a in SHORT_RUNS]
)
def test_a_documented_command_runs_with_a_short_budget(where, argv, tmp_path, monkeypatch):
    """Each documented `textrlhf train / compare / sft / rm` runs, with the budget as the only
    change (and its outputs in a temporary folder). Configs that read the reward model of
    `textrlhf rm configs/rm_tiny.yaml` (runs/rm_tiny) get a 2-step one first."""
    from agents.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "examples" / "own_model"))  # its reward module
    if "rm_tiny" in " ".join((REPO / a).read_text() for a in argv if (REPO / a).is_file()):
        rm = ["rm", str(REPO / "configs" / "rm_tiny.yaml"), "--set", "train.steps=2"]
        rm += ["train.warmup_steps=0", "train.eval_every=0", "output_dir=runs/rm_tiny"]
        assert main(rm) == 0
    assert main(short_run(argv, tmp_path)) == 0


def test_the_own_model_example_trains_one_iteration(tmp_path, monkeypatch):
    """docs/own_model.md's complete config, with its own reward module found on sys.path (what
    PYTHONPATH=examples/own_model does): one PPO iteration, evaluated on its test prompts."""
    from agents.cli import main

    monkeypatch.syspath_prepend(str(REPO / "examples" / "own_model"))
    config = REPO / "examples" / "own_model" / "config.yaml"
    short = [
        "total_timesteps=1024",
        "eval.episodes=8",
        f"run.root={tmp_path}",
        "run.progress=false",
    ]
    assert main(["train", str(config), "--name", "own", "--set", *short]) == 0
    summary = (tmp_path / "own" / "summary.json").read_text()
    assert '"final_return"' in summary


def test_the_block_finder_sees_markers_indents_and_heredocs():
    text = "x\n<!-- no-test: a sketch -->\n```python\nboom(\n```\n  ```bash\n  textrlhf -h\n  ```\n"
    found = [(m["lang"], bool(m["marker"]), m["indent"]) for m in FENCE.finditer(text)]
    assert found == [("python", True, ""), ("bash", False, "  ")]
    code = "A=1 # one\nfor s in 1 2; do echo $s $A; done\npython - <<'PY'\nprint(1)\nPY\n"
    assert commands(code) == [["echo", "1", "1"], ["python", "-"], ["<<", "print(1)"]]
    assert commands("a x \\\n  y && b # c\n") == [["a", "x", "y"], ["b"]]
    assert split_env(["PYTHONPATH=x", "textrlhf", "-h"]) == (
        {"PYTHONPATH": "x"},
        ["textrlhf", "-h"],
    )
