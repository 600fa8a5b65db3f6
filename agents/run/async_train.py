"""Asynchronous actor-learner training (docs/async.md): the learner's side and the job's wiring.

One torchrun world: rank 0 is the learner, rank 1 the actor (`rollout.actors: 1`). Both build
the same `Trainer` from the config (the same seeds, so the same initial weights, env and RNG
states); the actor then only steps its env (`agents.core.actor.run_actor`), and the learner runs
the synchronous loop with one change: `collect_rollout` receives the actor's batch instead of
collecting it. The update is the same clipped loss, its ratio taken against the behaviour
log-probs the actor recorded (`rollout.correction` changes that: agents/core/ppo.py).

Versions and staleness: version v is the policy after v updates; update k consumes batch k,
sampled by a version >= k - max_staleness (the actor waits rather than run further ahead).

RNG ownership: with max_staleness 0 (generate, then train) one torch RNG stream travels with the
messages (the learner sends its state with the weights, the actor sends it back after the
rollout), so the run draws the synchronous run's numbers in the synchronous run's order: the same
weights, bit for bit. With max_staleness >= 1 the actor keeps the synchronous run's stream for
its rollouts and the learner draws its minibatch orders from a stream of its own (seed + 2**32).

The schedule (which version sampled which batch; update k consumes batch k) is appended to
`schedule.jsonl` in the run folder, one line per update; `--replay RUN` makes the actor sample
each batch with exactly the recorded version, which reproduces the run bit for bit.

Checkpoints: the learner's as in the synchronous run, plus `<step>.actor.*` (the actor's env,
rollout carry-over, RNG states and its next batch j, written when the learner asks) and
`<step>.inflight.*` (the batches sampled before j that the learner had not consumed yet). A
resumed run consumes those first and the actor continues at batch j: with the original
schedule (`--resume RUN --replay ORIGINAL`) it ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from agents.core.actor import (
    ActorError,
    ActorLink,
    Batch,
    raw_batches_from_tensors,
    raw_batches_to_tensors,
    run_actor,
    use_group,
)
from agents.core.distributed import LOCAL, Distributed
from agents.core.rollout import EpisodeLog
from agents.run.checkpoint import (
    FORMAT_VERSION,
    atomic_save_json,
    atomic_save_tensors,
    read_checkpoint,
    rng_state,
    set_env_state,
    set_rng_state,
)
from agents.run.config import Config, config_changes, to_dict
from agents.run.files import atomic_write_text
from agents.run.interrupt import stop_on_first_interrupt
from agents.run.jsonio import read_json
from agents.run.resume import may_change_on_resume, rank_state
from agents.run.rundir import new_run_dir
from agents.run.trainer import Trainer
from agents.run.yamlio import read_yaml

SCHEDULE = "schedule.jsonl"
LEARNER, ACTOR = 0, 1  # ranks
LEARNER_SEED_OFFSET = 2**32  # the learner's own RNG stream when max_staleness >= 1


class AsyncLearner(Trainer):
    """The learner: the synchronous loop, with its rollouts received from the actor."""

    def __init__(
        self, cfg: Config, run_dir: str | Path | None, resume: bool = False, actor: int = ACTOR
    ):
        super().__init__(cfg, run_dir, resume=resume, dist=LOCAL)
        rollout = cfg.rollout
        self.handoff = rollout.max_staleness == 0  # one RNG stream, passed back and forth
        if not self.handoff and not resume:  # a resumed learner has its stream back
            torch.manual_seed(cfg.seed + LEARNER_SEED_OFFSET)
            # the diagnostics' drift then measures the staleness, not an act/evaluate mismatch
            self.diagnostics_warned = True
        self.link = ActorLink(actor, self.ppo.params, self.buffer)
        self.ppo.off_policy = True
        self.ppo.record_first_epoch = True  # the importance weights' statistics read it
        self.ppo.correction, self.ppo.tis_cap = rollout.correction, rollout.tis_cap
        self.batch: Batch | None = None
        self.learner_wait = 0.0  # seconds waiting for a batch since the last iteration's end
        self._mark = time.perf_counter()
        if resume:
            self._resume_schedule()

    def _saved_after(self, err: ActorError) -> ActorError:
        """Checkpoint after the actor's error (its part: its state before the failed rollout);
        returns the error to end the job with, with the command that resumes."""
        if self.run_dir is None:
            return err
        try:
            self.save()
        except Exception as save_err:  # the actor's error is the news; say why no checkpoint
            return ActorError(f"{err} (no checkpoint: {type(save_err).__name__}: {save_err})")
        return ActorError(
            f"{err}; saved at step {self.global_step:,}: continue with --resume {self.run_dir}"
        )

    def _resume_schedule(self) -> None:
        """A resumed learner: the batches its checkpoint holds first, and schedule.jsonl cut
        back to the checkpoint's updates (a later line was never part of a checkpoint)."""
        path = checkpoint_file(self.run_dir, self.global_step, "inflight")
        meta, tensors = read_checkpoint(path)
        self.link.queue = raw_batches_from_tensors(meta["batches"], tensors)
        kept = read_schedule(self.run_dir)[: self.iteration] if self.iteration else []
        atomic_write_text(self.run_dir / SCHEDULE, "".join(json.dumps(r) + "\n" for r in kept))

    def save(self, run_dir: Path | None = None) -> Path:
        """The synchronous checkpoint, after the actor wrote its state (`<step>.actor.*`) and
        with the batches it sampled ahead (`<step>.inflight.*`)."""
        if run_dir is not None and Path(run_dir) != self.run_dir:
            raise ValueError("an asynchronous run checkpoints into its own run folder only")
        next_batch = self.link.request_save(self.global_step)
        batches = [raw.index for raw in self.link.queue]
        if batches != list(range(self.iteration, next_batch)):
            raise RuntimeError(f"checkpoint at update {self.iteration}: batches {batches} held, "
                               f"the actor is at batch {next_batch}")  # fmt: skip
        write_checkpoint_file(
            checkpoint_file(self.run_dir, self.global_step, "inflight"),
            {"batches": batches, "next_batch": next_batch},
            raw_batches_to_tensors(self.link.queue),
        )
        return super().save(run_dir)

    def collect_rollout(self) -> EpisodeLog:
        """Receive batch `iteration` from the actor into the buffer (waiting for it)."""
        if self.handoff:  # the weights and the RNG state to sample this batch with
            self.link.publish(self.iteration, torch.get_rng_state())
        start = time.perf_counter()
        try:
            batch = self.link.receive()
        except ActorError as err:  # nothing of this iteration happened yet: a whole state
            raise self._saved_after(err) from None
        self.learner_wait += time.perf_counter() - start
        if batch.index != self.iteration:
            raise RuntimeError(f"update {self.iteration} received batch {batch.index}")
        if batch.rng is not None:
            torch.set_rng_state(batch.rng)
        self.batch = batch
        return batch.log

    def iterate(self) -> dict[str, float]:
        metrics = super().iterate()
        if not self.handoff:  # the new version goes out before this iteration's evaluation
            self.link.publish(self.iteration)
        batch = self.batch
        staleness = float(self.iteration - 1 - batch.version)
        now = time.perf_counter()
        span, self._mark = max(now - self._mark, 1e-9), now
        wait, busy = batch.meta["wait_s"], batch.meta["busy_s"]
        metrics.update(
            {
                "async/staleness_mean": staleness,
                "async/staleness_max": staleness,
                "async/version": float(batch.version),
                **{f"async/{k}": v for k, v in self.ppo.off_policy_stats.items()},
                "async/learner_idle": self.learner_wait / span,
                "async/actor_idle": wait / max(wait + busy, 1e-9),
            }
        )
        self.learner_wait = 0.0
        if self.run_dir is not None:
            append_line(
                self.run_dir / SCHEDULE,
                {"update": self.iteration - 1, "batch": batch.index, "actor": ACTOR,
                 "version": batch.version, "staleness": int(staleness)},
            )  # fmt: skip
        return metrics

    def _learn(self, stop_at: int | None, log: bool, stop_on_interrupt: bool) -> dict[str, Any]:
        self._mark = time.perf_counter()
        if not self.handoff:  # the actor samples during the initial evaluation
            self.link.publish(self.iteration)
        try:
            summary = super()._learn(stop_at, log, stop_on_interrupt)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that ended the run is the news
                self.link.stop()
            raise
        self.link.stop()
        return summary


def checkpoint_file(run_dir: Path, step: int, part: str) -> Path:
    """`<run>/checkpoints/<step>.<part>.json` (its tensors beside it, `.safetensors`)."""
    return Path(run_dir) / "checkpoints" / f"{step}.{part}.json"


def write_checkpoint_file(
    path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """The tensors, then the JSON that names them (with their hash), each atomically: the JSON
    exists only once the tensors are whole (`read_checkpoint` checks the pair)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_suffix(".safetensors")
    meta = {**meta, "format_version": FORMAT_VERSION, "weights_file": weights.name}
    meta["weights_sha256"] = atomic_save_tensors(tensors, weights)
    atomic_save_json(meta, path)


def capture_actor_state(actor: Trainer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The actor's state now: its env and rollout carry-over (as a data-parallel rank saves
    them) and its RNG states, copied (the env and the rollout change them in place)."""
    meta, tensors = rank_state(actor)
    meta["rng"], rng_tensors = rng_state()
    tensors.update(rng_tensors)
    return copy.deepcopy(meta), {k: v.clone() for k, v in tensors.items()}


def save_actor_state(
    actor: Trainer, run_dir: Path, step: int, next_batch: int, state: Any = None
) -> None:
    """The actor's part of the checkpoint at `step`: its state (`state`, captured before its
    next batch; None: now) and the index of that batch."""
    meta, tensors = state if state is not None else capture_actor_state(actor)
    meta = {**meta, "step": step, "next_batch": next_batch}
    write_checkpoint_file(checkpoint_file(run_dir, step, "actor"), meta, tensors)


def load_actor_state(actor: Trainer, run_dir: Path) -> int:
    """Restore the actor's part of the run's latest checkpoint; returns its next batch."""
    step = read_json(Path(run_dir) / "checkpoints" / "latest.json")["step"]
    meta, tensors = read_checkpoint(checkpoint_file(run_dir, step, "actor"))
    if "env" in meta:
        set_env_state(
            actor.env, meta["env"], {k: v for k, v in tensors.items() if k.startswith("env/")}
        )
    rollout = {
        k[len("rollout/") :]: v.numpy() for k, v in tensors.items() if k.startswith("rollout/")
    }
    actor.collector.runner.load_state_arrays(rollout)
    set_rng_state(meta["rng"], tensors)
    return int(meta["next_batch"])


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write, flushed to disk: a crash leaves whole lines
    (a torn last line at worst, which `read_schedule` ignores)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_schedule(run_dir: str | Path) -> list[dict[str, Any]]:
    """The recorded schedule of an asynchronous run, one record per update, in update order."""
    path = Path(run_dir) / SCHEDULE
    if not path.is_file():
        raise FileNotFoundError(f"cannot replay {run_dir}: no {SCHEDULE} in it (not an "
                                "asynchronous run, or it never finished an update)")  # fmt: skip
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line
    for k, record in enumerate(records):
        if record.get("update") != k or record.get("batch") != k:
            raise ValueError(f"{path}: line {k + 1} is {record}, expected update {k}")
    return records


def replay_versions(cfg: Config, run_dir: str | Path) -> list[int]:
    """The version that sampled each batch of the run in `run_dir`, after checking that `cfg`
    is that run's experiment (only what a resume may change may differ)."""
    saved = read_yaml(Path(run_dir) / "config.yaml")
    changed = config_changes(saved, to_dict(cfg), lambda key: not may_change_on_resume(key))
    if changed:
        raise ValueError(
            f"--replay {run_dir}: the config differs from the run's: " + "; ".join(changed)
        )
    return [int(record["version"]) for record in read_schedule(run_dir)]


def train_async(
    cfg: Config,
    dist: Distributed,
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    replay: str | Path | None = None,
    stop_on_interrupt: bool = False,
) -> Path:
    """The job of every rank of an asynchronous run: rank 0 creates the run folder and learns,
    rank 1 acts. Returns the run folder."""
    world = 1 + cfg.rollout.actors
    if cfg.rollout.actors < 1:
        raise ValueError("--replay re-runs an asynchronous run: set rollout.actors >= 1")
    if dist.world_size != world:
        raise ValueError(
            f"rollout.actors={cfg.rollout.actors} needs {world} processes (1 learner + "
            f"{cfg.rollout.actors} actor), this job has {dist.world_size}: launch it with "
            "`textrlhf train CONFIG` (which starts them), or torchrun --nproc_per_node="
            f"{world}; data-parallel learners with actors are not implemented yet"
        )
    versions = replay_versions(cfg, replay) if replay is not None else None
    use_group(dist.wait_group)  # gloo, and no timeout for a hung collective (agents/core/actor)
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "checkpoints" / "latest.json").is_file():
            raise FileNotFoundError(f"cannot resume {run_dir}: no checkpoints/latest.json in it")
    else:
        run_dir = new_run_dir(cfg, name, overwrite) if dist.is_main else None
        run_dir = Path(dist.broadcast_str(str(run_dir) if run_dir else None))
    if dist.rank == LEARNER:
        try:
            learner = AsyncLearner(cfg, run_dir, resume=resume is not None)
        except BaseException:
            if resume is None:
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing was written to it yet
            raise
        learner.learn(stop_on_interrupt=stop_on_interrupt)
    else:
        # the same construction as the learner's: the same weights, env and RNG states
        actor = Trainer(cfg, None, dist=LOCAL)
        first = load_actor_state(actor, run_dir) if resume is not None else 0
        # a stop signal reaches every rank: the learner decides when the actor stops
        with stop_on_first_interrupt(stop_on_interrupt, announce=False):
            run_actor(
                actor.collector, actor.ppo.params, actor.num_iterations,
                cfg.rollout.max_staleness, versions, LEARNER, first,
                lambda step, j, state: save_actor_state(actor, run_dir, step, j, state),
                lambda: capture_actor_state(actor),
            )  # fmt: skip
        actor.close()
    dist.close()
    return run_dir
