"""Our configs against each other (any config SB3 cannot run, e.g. LM policies): each (config,
seed) is a full `textrlhf train` run in `<out>/runs/<label>_s<seed>`, `jobs` of them at a time in
separate processes, read back from its run folder. A run folder from an earlier compare with the
same `out` is reused (finished, same config), resumed (a checkpoint) or refused (another config's
finished run, never deleted)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from agents.run.compare_report import write_config_report
from agents.run.compare_results import CompareFailed, ConfigRun, FailedRun, one_line
from agents.run.config import Config, flat_config, load_config, to_dict
from agents.run.jsonio import read_json
from agents.run.rundir import RunFolderError
from agents.run.trainer import train
from agents.run.yamlio import read_yaml


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def read_run(run_dir: Path, label: str, seed: int) -> ConfigRun:
    """Summary and learning curve of a finished run folder."""
    import csv

    try:
        summary = read_json(run_dir / "summary.json")
    except ValueError as err:
        raise ValueError(f"{run_dir / 'summary.json'} cannot be read: {err}") from None
    curve: list[tuple[float, float, float]] = []
    transitions, kl = 0.0, None
    components: dict[str, float] = {}
    start_components: dict[str, float] = {}  # the evaluation at step 0, before training
    prefix = "eval/reward_components/"
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            transitions = _number(row.get("rollout/transitions")) or transitions
            kl = _number(row.get("kl/kl_to_ref")) if row.get("kl/kl_to_ref") else kl
            ret, elapsed = _number(row.get("eval/return")), _number(row.get("time/elapsed"))
            if ret is not None and elapsed is not None:
                curve.append((elapsed, transitions, ret))
                components = {
                    k.removeprefix(prefix): float(v)
                    for k, v in row.items()
                    if k.startswith(prefix) and v not in (None, "")
                }
                if not curve[:-1] and _number(row.get("step")) == 0:
                    start_components = dict(components)
    return ConfigRun(
        label, seed, str(run_dir), summary.get("initial_return"), summary["final_return"],
        summary["wall_time_s"], int(summary["transitions"]), kl, curve, components,
        start_components, summary.get("code_version"),
    )  # fmt: skip


def train_one(source: str, overrides: list[str], seed: int, root: str, label: str) -> ConfigRun:
    """Train `source` with `seed` into `<root>/<label>_s<seed>` and read the run back; a run
    folder there from an earlier compare is reused or resumed (`continue_run`). A top-level
    function, so that worker processes can run it."""
    cfg = load_config(
        source, [*overrides, f"seed={seed}", "run.progress=false", f"run.root={root}"]
    )
    name = f"{label}_s{seed}"
    run_dir = Path(root) / name
    if run_dir.exists() or run_dir.is_symlink():
        run_dir = continue_run(cfg, run_dir, label)
    else:
        run_dir = train(cfg, name=name)
    return read_run(run_dir, label, seed)


# a finished run is reused when its config.yaml equals the config but for these keys
REUSE_MAY_DIFFER = ("run.root", "run.progress")


def continue_run(cfg: Config, run_dir: Path, label: str) -> Path:
    """The run folder of a (config, seed) that an earlier compare with the same --out made:
    reused when it finished with this config, resumed when it has a checkpoint (`--resume`:
    it refuses a changed training setting), trained again only when it has neither (nothing
    in it to keep). A finished run of another config is an error: it is never deleted."""
    summary_file = run_dir / "summary.json"
    summary = {}
    if summary_file.is_file():
        try:
            summary = read_json(summary_file)  # deep nesting too: a ValueError
        except ValueError as err:
            raise ValueError(f"{summary_file} is not JSON ({err}); remove it to resume") from None
    if isinstance(summary, dict) and summary.get("finished") is True:
        changed = _config_changes(run_dir, cfg)
        if changed:
            raise RunFolderError(
                f"{run_dir} holds a finished run of another config ({'; '.join(changed)}); "
                "pass another --out, or remove that folder to train this config there"
            )
        print(f"{label} seed {cfg.seed}: reusing the finished run {run_dir}", flush=True)
        return run_dir
    if (run_dir / "checkpoints" / "latest.json").is_file():
        print(f"{label} seed {cfg.seed}: resuming the unfinished run {run_dir}", flush=True)
        return train(cfg, resume=run_dir)
    return train(cfg, name=run_dir.name, overwrite=True)  # no checkpoint, not finished


def _config_changes(run_dir: Path, cfg: Config) -> list[str]:
    """'key: <in the run folder> there, <now> now' for each setting (but REUSE_MAY_DIFFER) in
    which the run folder's config.yaml differs from `cfg` (read through today's schema, so
    that keys added since it was written count at their defaults). `run.dtype: auto` accepts
    the run's dtype, whatever it was: a resume under auto continues in the recorded one."""
    saved = read_yaml(run_dir / "config.yaml")
    with contextlib.suppress(ValueError, TypeError):  # no longer valid: compare it as written
        saved = to_dict(load_config(saved))
    old, new = flat_config(saved), flat_config(to_dict(cfg))
    if old.get("run.dtype") == "auto":  # what auto resolved to (summary.json of a finished run)
        with contextlib.suppress(ValueError, OSError, KeyError):
            old["run.dtype"] = read_json(run_dir / "summary.json")["dtype"]
    if new.get("run.dtype") == "auto":  # as a resume under auto: the run's own dtype stands
        old.pop("run.dtype", None)
        new.pop("run.dtype", None)
    return [
        f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
        for key in sorted(set(old) | set(new))
        if key not in REUSE_MAY_DIFFER and old.get(key) != new.get(key)
    ]


def _labels(configs: list[str], overrides: list[str] | None) -> list[str]:
    """Each config's name, made unique (a repeated name gets -2, -3, ...)."""
    labels: list[str] = []
    for source in configs:
        name = load_config(source, overrides).name
        label, k = name, 2
        while label in labels:
            label, k = f"{name}-{k}", k + 1
        labels.append(label)
    return labels


# (config file, overrides, seed, run root, label): the arguments of one `train_one` call
Task = tuple[str, list[str], int, str, str]
Report = Callable[[Task, "ConfigRun | None", "Exception | None"], None]


def compare_configs(
    configs: list[str],
    seeds: int,
    out: str | Path,
    overrides: list[str] | None = None,
    jobs: int = 1,
    command: str | None = None,
) -> Path:
    """Train each config for `seeds` seeds (from its own `seed`), `jobs` runs at a time, and
    write compare.md, compare.json and compare.png to `out`. A run that fails does not stop
    the others; the report has the ones that finished, and then `CompareFailed` names the
    failed ones. A re-run with the same `out` reuses the finished runs (`train_one`)."""
    out = Path(out)
    root = str(out / "runs")
    overrides = list(overrides or [])
    tasks: list[Task] = []
    for source, label in zip(configs, _labels(configs, overrides)):
        first = load_config(source, overrides).seed
        tasks += [(source, overrides, seed, root, label) for seed in range(first, first + seeds)]
    results: list[ConfigRun] = []
    failed: list[FailedRun] = []

    def report(task: Task, run: ConfigRun | None, err: Exception | None) -> None:
        label, seed = task[4], task[2]
        if err is not None:
            failed.append(FailedRun(label, seed, one_line(err)))
            print(f"{label} seed {seed}: FAILED: {failed[-1].error}", file=sys.stderr, flush=True)
            return
        results.append(run)
        print(
            f"{run.label} seed {run.seed}: eval {run.initial_return} -> {run.final_return:.4f}  "
            f"wall {run.wall_time:6.1f}s  KL {run.kl_to_ref}",
            flush=True,
        )

    if jobs <= 1:
        _run_one_by_one(tasks, report)
    else:
        _run_in_processes(tasks, jobs, report)
    order = {(task[4], task[2]): k for k, task in enumerate(tasks)}  # the planned order
    results.sort(key=lambda r: order[r.label, r.seed])
    failed.sort(key=lambda f: order[f.label, f.seed])
    write_config_report(results, out, command, failed)
    if failed:
        raise CompareFailed(out, failed, len(tasks))
    return out


def _run_one_by_one(tasks: list[Task], report: Report) -> None:
    """Each task in this process, in order; each outcome goes to `report`."""
    for task in tasks:
        try:
            run = train_one(*task)
        except Exception as err:  # recorded, reported and raised below; the others run
            report(task, None, err)
        else:
            report(task, run, None)


def _run_in_processes(tasks: list[Task], jobs: int, report: Report) -> None:
    """The tasks in `jobs` spawned worker processes; each outcome goes to `report` as it comes.
    The tasks of a pool that broke are run again, each in a process of its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    spawn = multiprocessing.get_context("spawn")
    broken = []  # a worker that dies (a crash, the OOM killer) breaks the whole pool
    with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        futures = {pool.submit(train_one, *task): task for task in tasks}
        for future in as_completed(futures):
            try:
                run = future.result()
            except BrokenProcessPool:
                broken.append(futures[future])
            except Exception as err:  # recorded and reported; the others run
                report(futures[future], None, err)
            else:
                report(futures[future], run, None)
    for task in broken:  # so each of its runs gets a process of its own, one at a time
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            try:
                run = pool.submit(train_one, *task).result()
            except Exception as err:  # as above; BrokenProcessPool: this run's process died
                report(task, None, err)
            else:
                report(task, run, None)
