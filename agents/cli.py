"""The `textrlhf` command line.

textrlhf train CONFIG [--set k=v ...] [--resume RUN_DIR] [--overwrite] [--name NAME] [--nproc N]
textrlhf eval RUN_DIR [--episodes N] [--checkpoint PATH] [--stochastic]
textrlhf compare CONFIG_OR_ENV_ID ... [--seeds K] [--out DIR] [--set k=v ...]
textrlhf sft CONFIG [--set k=v ...] [--overwrite]   (agents.rlhf.sft)
textrlhf rm CONFIG [--set k=v ...] [--overwrite]    (agents.rlhf.reward_model)
textrlhf export RUN_DIR OUT [--merge] [--checkpoint PATH] [--overwrite]   (agents.run.export)
textrlhf report RUN_DIR [RUN_DIR ...] [--out FILE] [--open]   (agents.run.report)
textrlhf export-trajectories RUN_DIR OUT.jsonl|OUT.parquet   (agents.run.trajectories)
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from agents.core.actor import ActorError
from agents.core.ppo import NonFiniteLossError
from agents.run.checkpoint import CheckpointError
from agents.run.interrupt import StopNow, signal_label, signal_number, stop_at_once_on_signals
from agents.run.rundir import RunFolderError

if TYPE_CHECKING:
    from agents.run.config import Config

EXPECTED_ERRORS = (
    ValueError, TypeError, FileExistsError, FileNotFoundError, CheckpointError,
    NonFiniteLossError, RunFolderError, gym.error.Error, ActorError,
)  # fmt: skip


# under `--nproc`, the ranks leave their error lines in this folder for the launcher, which prints
# each distinct one once (instead of N copies, each followed by the other ranks' gloo tracebacks)
ERROR_DIR_VAR = "TEXTRLHF_ERROR_DIR"


def launch_nproc(argv: list[str], nproc: int) -> int:
    """`textrlhf train ... --nproc N`: run the same command under torchrun's launcher on this
    machine (`torchrun --standalone --nproc_per_node=N -m agents.cli train ...`). torchrun's
    agent watches the N processes: one that fails ends the others and the job (exit != 0)."""
    import logging
    import tempfile

    from torch.distributed.run import get_args_parser, run

    rest, skip = [], False
    for arg in argv:  # the same arguments without --nproc
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    torchrun_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", "--module", "agents.cli", *rest]
    )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun catches these (by default the first four) and passes them on to the ranks; one
    # that this process ignores (SIGINT under nohup) stays ignored, here and in the ranks
    handled = [
        name for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")
        if signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN
    ]  # fmt: skip
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", ",".join(handled))
    # the ranks set their torch threads from run.torch_threads; torchrun would set this 1 too,
    # after a four-line warning
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # the agent's own log lines (closing signals, exit codes) repeat what the report below says
    elastic_log = logging.getLogger("torch.distributed.elastic")
    level = elastic_log.level
    elastic_log.setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="textrlhf-errors-") as errors:
        os.environ[ERROR_DIR_VAR] = errors
        try:
            run(torchrun_args)
        except ChildFailedError as err:
            reported = rank_errors(Path(errors))
            if reported:  # what the ranks said, each distinct line once
                for line in reported:
                    print(line, file=sys.stderr)
                return 1
            print(f"textrlhf train: a rank failed:\n{err}", file=sys.stderr)
            return 1
        except SignalException as err:  # Ctrl-C/SIGTERM: torchrun passed it on and waited for
            return 128 + int(err.sigval)  # the ranks, and rank 0 said how the run ended
        finally:
            del os.environ[ERROR_DIR_VAR]
            elastic_log.setLevel(level)
    return 0


def rank_errors(folder: Path) -> list[str]:
    """The error lines the ranks left in `folder` (rank order, duplicates dropped). A rank that
    only lost contact with a failed peer is mentioned only when no rank said why."""
    said: dict[str, None] = {}
    lost = []
    for path in sorted(folder.glob("rank*.txt"), key=lambda p: int(p.stem[4:])):
        text = path.read_text(encoding="utf-8").rstrip("\n")
        if text.startswith("lost:"):
            lost.append(f"rank {path.stem[4:]} lost contact with the other ranks: {text[5:]}")
        else:
            said[text] = None
    return list(said) if said else [f"textrlhf train: {line}" for line in lost]


def report_error(text: str, lost_peer: bool = False) -> None:
    """Print one error line; a rank under `--nproc` leaves it to the launcher instead."""
    folder, rank = os.environ.get(ERROR_DIR_VAR), os.environ.get("RANK")
    if folder and rank is not None and Path(folder).is_dir():
        Path(folder, f"rank{int(rank)}.txt").write_text(
            ("lost:" if lost_peer else "") + text + "\n", encoding="utf-8"
        )
    else:
        print(text, file=sys.stderr)


def lost_peer(err: BaseException) -> bool:
    """A collective that failed because another rank ended (gloo: "Connection closed by peer"):
    the error raised inside torch.distributed, in a rank under the `--nproc` launcher."""
    if ERROR_DIR_VAR not in os.environ or not isinstance(err, RuntimeError):
        return False
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"torch{os.sep}distributed{os.sep}" in frames[-1].filename


def load_train_config(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The config of `textrlhf train` (YAML + --set), after the flag checks, and the keys that
    the policy type's defaults filled in."""
    from agents.run.config import load_config_and_defaults

    if args.resume and (args.overwrite or args.name):
        raise ValueError(
            "--resume continues an existing run; it cannot be combined with --overwrite or --name"
        )
    return load_config_and_defaults(args.config, args.set)


def check_before_launch(args: argparse.Namespace, nproc: int) -> None:
    """Fail fast, in this process: what every rank would reject (the config, the flags, a
    num_envs or batch_size that does not split over `nproc` ranks), before torchrun starts them."""
    from agents.run.preflight import check_config

    cfg, _ = load_train_config(args)
    check_config(cfg, nproc)


def async_actors(args: argparse.Namespace) -> int:
    """`textrlhf train`: the config's rollout.actors (0 for other commands, and for a config
    that does not load: the command itself then reports why)."""
    if args.command != "train":
        return 0
    try:
        cfg, _ = load_train_config(args)
    except EXPECTED_ERRORS:
        return 0
    return cfg.rollout.actors


def cmd_train(args: argparse.Namespace) -> int:
    from agents.api import train

    cfg, filled = load_train_config(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if filled and main_rank:
        print(f"defaults of policy.type {cfg.policy.type} filled in: " + ", ".join(filled))
    run = train(
        cfg, name=args.name, overwrite=args.overwrite, resume=args.resume, replay=args.replay
    )
    if not main_rank:
        return 0  # rank 0 reports for the job
    run_dir, summary = run.dir, run.summary
    print(f"run folder: {run_dir}")
    if summary.get("interrupted"):
        again = ["textrlhf", "train", args.config, *(["--set", *args.set] if args.set else [])]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        learners = world - cfg.rollout.actors  # the actors start by themselves
        if learners > 1:  # resume at the same world size (bit-exact); several nodes: torchrun
            again += ["--nproc", str(learners)]
        print(
            f"stopped by {summary.get('stop_signal') or 'Ctrl-C'} at step {summary['steps']:,}, "
            f"with a checkpoint; continue with:\n"
            f"  {shlex.join([*again, '--resume', str(run_dir)])}"
        )
        print(
            f"steps {summary['steps']:,}  return (last 100 episodes) "
            f"{summary['train_return_last100']}  wall {summary['wall_time_s']:.1f}s"
        )
        # not finished: `textrlhf train ... && next` stops here; 128 + the signal, as a shell says
        return 128 + int(signal_number(summary.get("stop_signal") or "Ctrl-C"))
    print(
        f"steps {summary['steps']:,}  final return {summary['final_return']}  "
        f"best return {summary['best_return']}  wall {summary['wall_time_s']:.1f}s  "
        f"sps {summary['sps']:,.0f}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from agents.run.config import MAX_EPISODES
    from agents.run.envs import make_eval_env
    from agents.run.evaluation import load_run_policy, read_run_config, run_evaluation
    from agents.run.preflight import check_sizes
    from agents.run.trainer import resolve_device

    cfg = read_run_config(args.run_dir, args.set, args.trust_remote_code)
    torch.set_num_threads(cfg.run.torch_threads)
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    if args.samples < 0:
        raise ValueError(f"--samples must be >= 0 (text samples to print), got {args.samples}")
    episodes = args.episodes if args.episodes is not None else cfg.eval.episodes
    source = "--episodes" if args.episodes is not None else "eval.episodes in the config"
    if episodes < 1:
        raise ValueError(
            f"evaluation needs at least 1 episode, got {episodes} ({source}); pass --episodes N "
            "with N >= 1"
        )
    if episodes > MAX_EPISODES:  # each episode's return (and text sample) is kept in memory
        raise ValueError(
            f"evaluation takes at most {MAX_EPISODES} episodes, got {episodes} ({source})"
        )
    check_sizes(cfg)
    env = make_eval_env(cfg, episodes)
    spaces = (env.single_observation_space, env.single_action_space)
    policy, path = load_run_policy(cfg, args.run_dir, args.checkpoint, spaces)
    device = resolve_device(cfg.run.device)
    policy.to(device)
    log = run_evaluation(policy, cfg, env, episodes, args.deterministic, args.seed, device=device)
    env.close()
    mode = (
        "deterministic"
        if (cfg.eval.deterministic if args.deterministic is None else args.deterministic)
        else "sampled"
    )
    print(f"checkpoint: {path}")
    print("returns: " + " ".join(f"{r:.2f}" for r in log.returns))
    print(
        f"mean return over {len(log.returns)} episodes ({mode}): "
        f"{np.mean(log.returns):.4f} ± {np.std(log.returns):.4f}"
    )
    for key, values in sorted(log.metrics.items()):
        print(f"episode/{key}: {np.mean(values):.4f}")
    for sample in log.samples[: args.samples]:
        print("-" * 60)
        for key, value in sample.items():
            print(f"{key}: {value}")


def cmd_export(args: argparse.Namespace) -> None:
    from agents.run.export import export_run

    done = export_run(
        args.run_dir, args.out, args.merge, args.checkpoint, args.overwrite,
        args.trust_remote_code,
    )  # fmt: skip
    print(f"checkpoint: {done['checkpoint']}")
    what = {
        "merged": "transformers folder (LoRA merged into the base)",
        "adapter": "peft adapter folder",
        "full": "transformers folder",
    }[done["kind"]]
    print(f"wrote {what}: {done['out']}")


def cmd_compare(args: argparse.Namespace) -> int:
    from agents.run.compare import CompareFailed, compare
    from agents.run.config_types import max_torch_threads

    # each seed is a training run: 1000 per config is past any comparison's need, and keeps the
    # seeds (the config's seed + i) within the seed range
    if not 1 <= args.seeds <= 1000:
        raise ValueError(f"--seeds must be in [1, 1000], got {args.seeds}")
    thresholds = {}
    for item in args.threshold or []:
        env_id, _, value = item.partition("=")
        try:
            thresholds[env_id] = float(value)
            if not np.isfinite(thresholds[env_id]):
                raise ValueError(value)
        except ValueError:
            raise ValueError(
                f"--threshold {item!r} must look like ENV_ID=VALUE with a finite number VALUE, e.g. "
                "Pendulum-v1=-200"
            ) from None
    most = max_torch_threads()  # each job is a process with one torch thread
    if not 1 <= args.jobs <= most:
        raise ValueError(
            f"--jobs must be in [1, {most}] (4 per CPU of this machine), got {args.jobs}"
        )
    agents = ("ours",) if args.no_sb3 else ("ours", "sb3")
    command = "textrlhf " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        out = compare(
            args.targets, args.seeds, args.out, args.set, thresholds, agents, args.jobs, command
        )
    except CompareFailed as err:  # the report holds the runs that finished
        print((err.out / "compare.md").read_text())
        print(f"wrote {err.out / 'compare.md'} and {err.out / 'compare.png'}")
        print(f"textrlhf compare: error: {err}", file=sys.stderr)
        return 1
    print((out / "compare.md").read_text())
    print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")
    return 0


def cmd_report(args: argparse.Namespace) -> None:
    from agents.api import report

    path = report(args.run_dirs, args.out)
    print(f"wrote {path}")
    if args.open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"no browser could be opened here; open {path} yourself", file=sys.stderr)


def cmd_export_trajectories(args: argparse.Namespace) -> None:
    from agents.api import export_trajectories

    print(f"wrote {export_trajectories(args.run_dir, args.out)}")


def cmd_stage(args: argparse.Namespace) -> None:
    """`textrlhf sft|rm CONFIG`: an RLHF stage (agents/rlhf/stage.py)."""
    if args.command == "sft":
        from agents.rlhf.sft import main
    else:
        from agents.rlhf.reward_model import main
    print(f"output folder: {main(args.config, args.set, args.overwrite)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textrlhf", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train PPO from a YAML config into runs/<name>-<time>/")
    p.add_argument("config", help="the run's YAML config file")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set ppo.n_epochs=10 seed=3 (repeatable)",
    )
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--replay", metavar="RUN_DIR",
        help="asynchronous runs: re-run RUN_DIR's recorded schedule (bit-identical weights; "
        "docs/async.md)",
    )  # fmt: skip
    p.add_argument(
        "--name", metavar="NAME", help="run folder name under run.root (default <name>-<time>)"
    )
    p.add_argument(
        "--nproc", type=int, default=None, metavar="N",
        help="data-parallel processes on this machine (launches torchrun; see docs/distributed.md)",
    )  # fmt: skip
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint")
    p.add_argument("run_dir", help="a run folder")
    p.add_argument("--episodes", type=int, help="episodes (default: the run's eval.episodes)")
    p.add_argument("--checkpoint", help="a checkpoint .json/.safetensors (default: the latest)")
    p.add_argument(
        "--stochastic", dest="deterministic", action="store_false", default=None,
        help="sample actions (default: the run's eval.deterministic)",
    )  # fmt: skip
    p.add_argument(
        "--deterministic", dest="deterministic", action="store_true",
        help="take the most likely action (default: the run's eval.deterministic)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, help="eval seed (default: the run's, 10000 + seed)")
    p.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow the run folder's config to name code to import ('module:function')",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=3, help="text samples to print")
    p.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override keys of the run's config for this evaluation",
    )  # fmt: skip
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "compare",
        help="our PPO vs SB3 PPO, or our configs against each other, over several seeds",
    )
    p.add_argument(
        "targets", nargs="+", metavar="CONFIG_OR_ENV_ID",
        help="YAML configs (or Gymnasium ids, for SB3's defaults) to compare",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds per config, from its own seed")
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at a time (our configs only; 1 torch thread each)"
    )
    p.add_argument(
        "--no-sb3", action="store_true", help="compare our configs only, even MLP configs"
    )
    p.add_argument(
        "--out", default="runs/compare",
        help="the folder for compare.md, compare.json, compare.png and the runs",
    )  # fmt: skip
    p.add_argument(
        "--threshold",
        action="append",
        metavar="ENV_ID=VALUE",
        help="reward threshold for envs without one",
    )
    p.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override keys of every compared config",
    )  # fmt: skip
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write a run's LM as a transformers / peft folder")
    p.add_argument("run_dir", help="a run folder with an LM policy")
    p.add_argument("out", help="the folder to write")
    p.add_argument(
        "--merge", action="store_true",
        help="LoRA runs: merge the adapter into the base (default: write the adapter folder)",
    )  # fmt: skip
    p.add_argument("--checkpoint", help="a checkpoint .json/.safetensors (default: the latest)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    p.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow the run folder's config to name code to import ('module:function')",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report",
        help="write a run's self-contained report page (curves, episode viewer, config)",
        description="Write one self-contained HTML file (no network: data, script and style "
        "inline) with the curves of metrics.csv, the logged episodes token by token, and each "
        "run's config and summary (docs/report.md). Written at the end of every training run "
        "too.",
    )
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR",
        help="run folder(s); several: their curves overlaid on one page",
    )  # fmt: skip
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the file to write (default: RUN_DIR/report.html of the first)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "export-trajectories",
        help="write a run's logged episodes (tokens, log-probs, values, ...) as JSONL or Parquet",
        description="One record per logged episode of trajectories.jsonl (docs/report.md lists "
        "the fields), written atomically.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a text run's folder")
    p.add_argument(
        "out", metavar="OUT", help="OUT.jsonl, or OUT.parquet (needs pyarrow: pip install pyarrow)"
    )
    p.set_defaults(func=cmd_export_trajectories)

    for name, text in (
        ("sft", "supervised fine-tuning of the LM policy"),
        ("rm", "train a reward model on preference pairs"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="the stage's YAML config file")
        p.add_argument(
            "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
            help="override config keys",
        )  # fmt: skip
        p.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
        p.set_defaults(func=cmd_stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    actors = async_actors(args) if "WORLD_SIZE" not in os.environ else 0
    if actors:  # the learner and its actors: one torchrun job on this machine
        if args.nproc not in (None, 1):
            print(
                f"textrlhf train: error: --nproc {args.nproc} with rollout.actors={actors}: "
                "data-parallel learners with actors are not implemented yet (docs/async.md)",
                file=sys.stderr,
            )
            return 1
        return launch_nproc(argv, 1 + actors)
    if getattr(args, "nproc", None) is not None:
        if args.nproc < 1:
            print(f"textrlhf train: error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
            return 1
        if "WORLD_SIZE" in os.environ:
            print(
                "textrlhf train: error: --nproc starts torchrun itself; under torchrun, leave "
                "it out", file=sys.stderr,
            )  # fmt: skip
            return 1
        if args.nproc > 1:
            try:
                check_before_launch(args, args.nproc)
            except EXPECTED_ERRORS as err:
                print(f"textrlhf train: error: {err}", file=sys.stderr)
                return 1
            return launch_nproc(argv, args.nproc)
    try:
        with stop_at_once_on_signals():  # SIGTERM unwinds like Ctrl-C: locks and temp files go
            rc = args.func(args)  # None: success
    except EXPECTED_ERRORS as err:
        report_error(f"textrlhf {args.command}: error: {err}")
        return 1
    except KeyboardInterrupt as err:  # a second Ctrl-C/SIGTERM in `train`, any in other commands
        signum = err.signum if isinstance(err, StopNow) else signal.SIGINT
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"\ntextrlhf {args.command}: stopped by {signal_label(signum)}", file=sys.stderr)
        return 128 + int(signum)
    except OSError as err:  # a read-only folder, a full disk: name the file, no traceback
        report_error(
            f"textrlhf {args.command}: error: cannot write {err.filename or 'a file'}: "
            f"{err.strerror or err}; its previous contents and the files written before (e.g. "
            "the last checkpoint) are intact"
        )
        return 1
    except RuntimeError as err:
        if not lost_peer(err):
            raise
        report_error(str(err).splitlines()[0], lost_peer=True)
        return 1
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
