"""Asynchronous rollouts: the actor's loop and the learner <-> actor messages (docs/async.md).

The learner (rank 0) and an actor (rank 1) of one torchrun world talk point to point over
torch.distributed (gloo on CPU). Every message is a small int64 header followed by its payloads,
and each direction is one ordered stream: gloo delivers point-to-point messages between two
ranks in the order they were sent, so the receiver reads them in exactly that order.

    learner -> actor   WEIGHTS  (version, flags): the trainable parameters as they are stored
                                (one flat tensor after `flatten_parameters`; adapters only under
                                LoRA), then with FLAG_RNG the torch RNG state to sample with
                       SAVE     (step): write your state for the checkpoint at `step`;
                                the actor answers SAVED (its next batch) when it next waits
                       STOP     nothing more follows; the actor answers DONE
    actor -> learner   BATCH    (batch, version, json bytes, FLAG_RNG): the rollout buffer's
                                tensors as one uint8 payload, the episode log and timings as
                                JSON, then with FLAG_RNG the torch RNG state after the rollout
                       ERROR    (json bytes): the actor's error, as text
                       SAVED    (next batch): its state is written; the batches before are sent
                       DONE     nothing more follows

No pickle crosses processes: tensors as bytes, everything else as JSON. The actor receives
weights on a thread of its own (`WeightInbox`), so that it can sample with the newest version
while the learner keeps sending; it samples batch k only with a version >= k - max_staleness
and waits otherwise. The learner blocks only when it needs the next batch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from agents.core.buffer import RolloutBuffer
from agents.core.rollout import EpisodeLog

WEIGHTS, STOP, BATCH, ERROR, DONE, SAVE, SAVED = range(7)
FLAG_RNG = 1
HEADER = 4  # int64 slots: kind, batch or version, json bytes or flags, flags


# the process group the messages travel in: gloo (CPU tensors) also when the default group is
# NCCL, and without the default group's timeout, which is meant for a hung collective: an actor
# may wait for weights through a long evaluation (a peer that dies closes the connection, and
# torchrun ends the job). `use_group` sets it; None: the default group.
GROUP: Any = None


def use_group(group: Any) -> None:
    global GROUP
    GROUP = group


def _send(tensor: torch.Tensor, dst: int) -> Any:
    return torch.distributed.isend(tensor, dst, group=GROUP)


def _recv(tensor: torch.Tensor, src: int) -> torch.Tensor:
    torch.distributed.recv(tensor, src, group=GROUP)
    return tensor


def _header(*values: int) -> torch.Tensor:
    out = torch.zeros(HEADER, dtype=torch.int64)
    out[: len(values)] = torch.tensor(values, dtype=torch.int64)
    return out


def rollout_tensors(buffer: RolloutBuffer) -> list[torch.Tensor]:
    """The buffer fields a rollout writes, in a fixed order (observations and actions leaf by
    leaf, as their spaces nest): what a BATCH message carries."""
    leaves: list[torch.Tensor] = []

    def add(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            leaves.append(x)
        else:
            for item in x.values() if isinstance(x, dict) else x:
                add(item)

    add(buffer.obs)
    add(buffer.actions)
    leaves += [
        buffer.log_probs, buffer.values, buffer.rewards, buffer.terminated, buffer.truncated,
        buffer.valid, buffer.episode_starts, buffer.final_values, buffer.has_final_value,
        buffer.last_value, buffer.truncated_mass,
    ]  # fmt: skip
    return leaves


def pack_rollout(buffer: RolloutBuffer) -> torch.Tensor:
    """The rollout's tensors as one flat uint8 tensor (their bytes, in `rollout_tensors` order)."""
    return torch.cat(
        [t.detach().cpu().reshape(-1).view(torch.uint8) for t in rollout_tensors(buffer)]
    )


def unpack_rollout(payload: torch.Tensor, buffer: RolloutBuffer) -> None:
    """Write a `pack_rollout` payload into `buffer` (same shapes: the same config)."""
    offset = 0
    for t in rollout_tensors(buffer):
        n = t.numel() * t.element_size()
        src = payload[offset : offset + n].view(t.dtype).view(t.shape)
        t.copy_(src.to(t.device))
        offset += n
    if offset != payload.numel():
        raise ValueError(f"a rollout message of {payload.numel()} bytes, expected {offset}")


def rollout_bytes(buffer: RolloutBuffer) -> int:
    return sum(t.numel() * t.element_size() for t in rollout_tensors(buffer))


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot send {type(x).__name__} in an episode log")


def encode_json(data: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(data, default=_json_default).encode()), dtype=torch.uint8)


def decode_json(data: torch.Tensor) -> dict[str, Any]:
    return json.loads(bytes(data.tolist()).decode())


@dataclass
class Batch:
    """One actor rollout as the learner receives it (the tensors are in the learner's buffer)."""

    index: int  # the batch's number: update k consumes batch k
    version: int  # the policy version (updates applied) that sampled it
    log: EpisodeLog
    rng: torch.Tensor | None  # the actor's torch RNG state after the rollout (max_staleness 0)
    meta: dict[str, Any]  # the actor's timings: wait_s (for weights), busy_s (rollout + send)


@dataclass
class RawBatch:
    """A BATCH message as received, not yet unpacked (a batch sampled ahead of its update)."""

    index: int
    payload: torch.Tensor  # uint8, `pack_rollout`
    text: torch.Tensor  # uint8, JSON
    rng: torch.Tensor | None


def raw_batches_to_tensors(batches: list[RawBatch]) -> dict[str, torch.Tensor]:
    """Batches sampled but not yet consumed, as the tensors of a checkpoint file."""
    out: dict[str, torch.Tensor] = {}
    for raw in batches:
        out[f"batch{raw.index}/payload"] = raw.payload
        out[f"batch{raw.index}/json"] = raw.text
        if raw.rng is not None:
            out[f"batch{raw.index}/rng"] = raw.rng
    return out


def raw_batches_from_tensors(
    indices: list[int], tensors: dict[str, torch.Tensor]
) -> list[RawBatch]:
    return [
        RawBatch(k, tensors[f"batch{k}/payload"], tensors[f"batch{k}/json"],
                 tensors.get(f"batch{k}/rng"))
        for k in indices
    ]  # fmt: skip


class ActorError(RuntimeError):
    """The actor process raised: its error, as the learner reports it."""


# ----------------------------------------------------------------------------- learner side


class ActorLink:
    """The learner's end of the link to one actor: publish weights, receive batches, stop."""

    def __init__(self, actor: int, params: list[torch.Tensor], buffer: RolloutBuffer):
        self.actor, self.params, self.buffer = actor, params, buffer
        self.payload = torch.empty(rollout_bytes(buffer), dtype=torch.uint8)
        self.rng_size = torch.get_rng_state().numel()
        self.sending: list[tuple[Any, torch.Tensor]] = []  # isends in flight, their tensors
        self.stopped = False
        # batches received before they are needed (at a checkpoint, or from one): raw messages
        self.queue: list[RawBatch] = []

    def publish(self, version: int, rng: torch.Tensor | None = None) -> None:
        """Send the current weights as `version` (and the RNG state to sample with); returns at
        once (the tensors are copies, kept until their send completes)."""
        self._reap()
        tensors = [_header(WEIGHTS, version, FLAG_RNG if rng is not None else 0)]
        tensors += [p.detach().cpu().clone() for p in self.params]
        if rng is not None:
            tensors.append(rng.clone())
        self.sending += [(_send(t, self.actor), t) for t in tensors]

    def receive(self) -> Batch:
        """The next batch, written into the learner's buffer (blocks until it arrives); an
        actor's error is raised here as `ActorError`."""
        raw = self.queue.pop(0) if self.queue else self._next(expect=BATCH)
        unpack_rollout(raw.payload, self.buffer)
        data = decode_json(raw.text)
        self.buffer.has_truncated_mass = data["has_truncated_mass"]
        log = EpisodeLog(**data["log"])
        return Batch(raw.index, data["version"], log, raw.rng, data["meta"])

    def request_save(self, step: int) -> int:
        """Ask the actor to write its state for the checkpoint at `step`; keep the batches it
        sent before (sampled, not yet consumed: `queue`). Returns the actor's next batch."""
        self.sending.append((_send(_header(SAVE, step), self.actor), torch.empty(0)))
        while True:
            raw = self._next(expect=SAVED)
            if isinstance(raw, int):
                return raw
            self.queue.append(raw)

    def _next(self, expect: int) -> Any:
        """Read the next message: a batch (RawBatch), or with `expect` SAVED its next batch."""
        header = _recv(torch.zeros(HEADER, dtype=torch.int64), self.actor).tolist()
        kind = header[0]
        if kind == ERROR:
            text = decode_json(_recv(torch.empty(header[2], dtype=torch.uint8), self.actor))
            raise ActorError(f"actor (rank {self.actor}) failed: {text['error']}")
        if kind == SAVED and expect == SAVED:
            return header[1]
        if kind != BATCH:
            raise RuntimeError(f"unexpected message {header} from actor rank {self.actor}")
        _, index, size, flags = header
        payload = _recv(torch.empty_like(self.payload), self.actor)
        text = _recv(torch.empty(size, dtype=torch.uint8), self.actor)
        rng = None
        if flags & FLAG_RNG:
            rng = _recv(torch.empty(self.rng_size, dtype=torch.uint8), self.actor)
        return RawBatch(index, payload, text, rng)

    def stop(self) -> None:
        """Tell the actor to finish and read what it still sends until its DONE (batches
        sampled ahead of an early end are dropped). Once; a no-op afterwards."""
        if self.stopped:
            return
        self.stopped = True
        self.sending.append((_send(_header(STOP), self.actor), torch.empty(0)))
        while True:
            header = _recv(torch.zeros(HEADER, dtype=torch.int64), self.actor).tolist()
            if header[0] in (DONE, SAVED):
                if header[0] == DONE:
                    break
                continue
            if header[0] == ERROR:
                _recv(torch.empty(header[2], dtype=torch.uint8), self.actor)
                continue
            _recv(self.payload, self.actor)
            _recv(torch.empty(header[2], dtype=torch.uint8), self.actor)
            if header[3] & FLAG_RNG:
                _recv(torch.empty(self.rng_size, dtype=torch.uint8), self.actor)
        for work, _ in self.sending:
            work.wait()
        self.sending = []

    def _reap(self) -> None:
        """Forget the sends that completed (gloo: only `wait` tells, so the oldest ones, which
        the actor's receiving thread has read long since, are waited for)."""
        while len(self.sending) > 64:
            work, _ = self.sending.pop(0)
            work.wait()


# ----------------------------------------------------------------------------- actor side


class WeightInbox:
    """The actor's receiving thread: every WEIGHTS message the learner sends, kept by version
    until the rollout loop takes it (`take`); STOP ends it."""

    def __init__(self, learner: int, params: list[torch.Tensor]):
        self.learner, self.params = learner, params
        self.rng_size = torch.get_rng_state().numel()
        self.versions: dict[int, tuple[list[torch.Tensor], torch.Tensor | None]] = {}
        self.stopped = False
        self.saves: list[int] = []  # checkpoint steps asked for, not yet handled
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="weight-inbox", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                header = _recv(torch.zeros(HEADER, dtype=torch.int64), self.learner).tolist()
                if header[0] == STOP:
                    with self.cond:
                        self.stopped = True
                        self.cond.notify_all()
                    return
                if header[0] == SAVE:
                    with self.cond:
                        self.saves.append(header[1])
                        self.cond.notify_all()
                    continue
                _, version, flags, _ = header
                weights = [
                    _recv(torch.empty_like(p, device="cpu"), self.learner) for p in self.params
                ]
                rng = None
                if flags & FLAG_RNG:
                    rng = _recv(torch.empty(self.rng_size, dtype=torch.uint8), self.learner)
                with self.cond:
                    self.versions[version] = (weights, rng)
                    self.cond.notify_all()
        except BaseException as err:  # the learner is gone: the rollout loop raises it
            with self.cond:
                self.error = err
                self.cond.notify_all()

    def take(
        self, need: int, exact: bool, on_save: Callable[[int], None]
    ) -> tuple[int, list[torch.Tensor], torch.Tensor | None] | None:
        """Block until a version >= `need` is here (exactly `need` when `exact`: a replay), then
        return (version, weights, rng) of the newest such one, forgetting the older ones (it
        stays here: the next batch may take it again); None once the learner said STOP. A
        checkpoint asked for meanwhile is handled first: `on_save(step)`."""
        with self.cond:
            while True:
                while self.saves:
                    on_save(self.saves.pop(0))
                if self.stopped:
                    return None
                if self.error is not None:
                    raise RuntimeError(f"lost the learner: {self.error}") from self.error
                ready = [v for v in self.versions if v >= need and (v == need or not exact)]
                if ready:
                    version = max(ready)
                    weights, rng = self.versions[version]
                    for v in [v for v in self.versions if v < version]:
                        del self.versions[v]
                    return version, weights, rng
                self.cond.wait()

    def wait_for_stop(self, on_save: Callable[[int], None]) -> None:
        """Block until STOP (or a lost learner), handling the checkpoints asked for."""
        with self.cond:
            while True:
                while self.saves:
                    on_save(self.saves.pop(0))
                if self.stopped or self.error is not None:
                    return
                self.cond.wait()


def run_actor(
    collector: Any,
    params: list[torch.Tensor],
    num_batches: int,
    max_staleness: int,
    schedule: list[int] | None = None,
    learner: int = 0,
    first_batch: int = 0,
    save_state: Callable[[int, int, Any], None] | None = None,
    capture: Callable[[], Any] | None = None,
) -> None:
    """The actor's loop: for each batch k from `first_batch`, take the newest weights with
    version >= k - `max_staleness` (waiting for them if need be), sample one rollout with
    `collector`, send it.

    `schedule` (a replay): batch k is sampled by exactly version schedule[k] (beyond its end,
    as usual). A WEIGHTS message with an RNG state (max_staleness 0) sets the torch RNG before
    the rollout and the state after it goes back with the batch: the learner and the actor then
    draw from one stream, in the synchronous run's order. A checkpoint request is handled while
    the loop waits, between rollouts: `save_state(step, next_batch, capture())` writes the
    actor's state, then SAVED tells the learner. An error in the loop is sent to the learner,
    which saves a checkpoint (the actor's part: its state `capture`d before the failed rollout)
    and ends the job with it; then it is raised here."""
    buffer = collector.buffer
    sending: list[tuple[int, list[Any], list[torch.Tensor]]] = []  # (batch, isends, tensors)
    current = None
    k = first_batch  # the next batch
    before = None  # the actor's state before the rollout in progress (`capture`)

    def send(batch: int, tensors: list[torch.Tensor]) -> None:
        sending.append((batch, [_send(t, learner) for t in tensors], tensors))

    def on_save(step: int) -> None:
        if save_state is not None:
            save_state(step, k, capture() if capture is not None else None)
        send(-1, [_header(SAVED, k)])

    def on_save_after_error(step: int) -> None:
        if save_state is not None:
            state = before if before is not None or capture is None else capture()
            save_state(step, k, state)
        send(-1, [_header(SAVED, k)])

    inbox = WeightInbox(learner, params)
    try:
        for k in range(first_batch, num_batches):
            start = time.perf_counter()
            exact = schedule is not None and k < len(schedule)
            got = inbox.take(schedule[k] if exact else max(k - max_staleness, 0), exact, on_save)
            if got is None:  # the learner ended early
                break
            version, weights, rng = got
            waited = time.perf_counter() - start
            # version v means the learner consumed batches < v: their sends are complete
            for _, works, _ in [item for item in sending if item[0] < version]:
                for work in works:
                    work.wait()
            sending = [item for item in sending if item[0] >= version]
            if version != current:
                with torch.no_grad():
                    for p, w in zip(params, weights):
                        p.copy_(w)
                current = version
            if rng is not None:
                torch.set_rng_state(rng)
            before = capture() if capture is not None else None
            log = collector.collect()
            data = {
                "version": version, "log": asdict(log),
                "has_truncated_mass": buffer.has_truncated_mass,
                "meta": {"wait_s": waited, "busy_s": time.perf_counter() - start - waited},
            }  # fmt: skip
            text = encode_json(data)
            after = torch.get_rng_state() if rng is not None else None
            tensors = [_header(BATCH, k, text.numel(), FLAG_RNG if after is not None else 0)]
            send(k, tensors + [pack_rollout(buffer), text] + ([after] if after is not None else []))
        else:
            k = num_batches
    except Exception as err:
        text = encode_json({"error": f"{type(err).__name__}: {err}"})
        send(-1, [_header(ERROR, -1, text.numel()), text])
        inbox.wait_for_stop(on_save_after_error)  # the learner saves and ends the job
        torch.distributed.send(_header(DONE), learner, group=GROUP)
        raise
    inbox.wait_for_stop(on_save)
    torch.distributed.send(_header(DONE), learner, group=GROUP)
    for _, works, _ in sending:
        for work in works:
            work.wait()
