"""Asynchronous rollouts: the actor's loop and the learner <-> actor messages (docs/async.md).

The learner (rank 0) and an actor (rank 1) of one torchrun world talk point to point over
torch.distributed (gloo on CPU). Every message is a small int64 header followed by its payloads,
and each direction is one ordered stream: gloo delivers point-to-point messages between two
ranks in the order they were sent, so the receiver reads them in exactly that order.

    learner -> actor   WEIGHTS  (version, flags): the trainable parameters as they are stored
                                (one flat tensor after `flatten_parameters`; adapters only under
                                LoRA), then with FLAG_RNG the torch RNG state to sample with
                       STOP     nothing more follows; the actor answers DONE
    actor -> learner   BATCH    (batch, version, json bytes, FLAG_RNG): the rollout buffer's
                                tensors as one uint8 payload, the episode log and timings as
                                JSON, then with FLAG_RNG the torch RNG state after the rollout
                       ERROR    (json bytes): the actor's error, as text
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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from agents.core.buffer import RolloutBuffer
from agents.core.rollout import EpisodeLog

WEIGHTS, STOP, BATCH, ERROR, DONE = range(5)
FLAG_RNG = 1
HEADER = 4  # int64 slots: kind, batch or version, json bytes or flags, flags


def _send(tensor: torch.Tensor, dst: int) -> Any:
    return torch.distributed.isend(tensor, dst)


def _recv(tensor: torch.Tensor, src: int) -> torch.Tensor:
    torch.distributed.recv(tensor, src)
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
        header = _recv(torch.zeros(HEADER, dtype=torch.int64), self.actor).tolist()
        kind = header[0]
        if kind == ERROR:
            text = decode_json(_recv(torch.empty(header[2], dtype=torch.uint8), self.actor))
            raise ActorError(f"actor (rank {self.actor}) failed: {text['error']}")
        if kind != BATCH:
            raise RuntimeError(f"unexpected message {header} from actor rank {self.actor}")
        _, index, size, flags = header
        unpack_rollout(_recv(self.payload, self.actor), self.buffer)
        data = decode_json(_recv(torch.empty(size, dtype=torch.uint8), self.actor))
        rng = None
        if flags & FLAG_RNG:
            rng = _recv(torch.empty(self.rng_size, dtype=torch.uint8), self.actor)
        self.buffer.has_truncated_mass = data["has_truncated_mass"]
        return Batch(index, data["version"], EpisodeLog(**data["log"]), rng, data["meta"])

    def stop(self) -> None:
        """Tell the actor to finish and read what it still sends until its DONE (batches
        sampled ahead of an early end are dropped). Once; a no-op afterwards."""
        if self.stopped:
            return
        self.stopped = True
        self.sending.append((_send(_header(STOP), self.actor), torch.empty(0)))
        while True:
            header = _recv(torch.zeros(HEADER, dtype=torch.int64), self.actor).tolist()
            if header[0] == DONE:
                break
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
        self, need: int, exact: bool
    ) -> tuple[int, list[torch.Tensor], torch.Tensor | None] | None:
        """Block until a version >= `need` is here (exactly `need` when `exact`: a replay), then
        return (version, weights, rng) of the newest such one, forgetting the older ones (it
        stays here: the next batch may take it again); None once the learner said STOP."""
        with self.cond:
            while True:
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

    def wait_for_stop(self) -> None:
        with self.cond:
            while not self.stopped and self.error is None:
                self.cond.wait()


def run_actor(
    collector: Any,
    params: list[torch.Tensor],
    num_batches: int,
    max_staleness: int,
    schedule: list[int] | None = None,
    learner: int = 0,
) -> None:
    """The actor's loop: for each batch k, take the newest weights with version >= k -
    `max_staleness` (waiting for them if need be), sample one rollout with `collector`, send it.

    `schedule` (a replay): batch k is sampled by exactly version schedule[k] (beyond its end,
    as usual). A WEIGHTS message with an RNG state (max_staleness 0) sets the torch RNG before
    the rollout and the state after it goes back with the batch: the learner and the actor then
    draw from one stream, in the synchronous run's order. An error in the loop is sent to the
    learner (which ends the job with it) and raised."""
    inbox = WeightInbox(learner, params)
    buffer = collector.buffer
    sending: list[tuple[int, list[Any], list[torch.Tensor]]] = []  # (batch, isends, tensors)
    current = None
    try:
        for k in range(num_batches):
            start = time.perf_counter()
            exact = schedule is not None and k < len(schedule)
            got = inbox.take(schedule[k] if exact else max(k - max_staleness, 0), exact)
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
            log = collector.collect()
            data = {
                "version": version, "log": asdict(log),
                "has_truncated_mass": buffer.has_truncated_mass,
                "meta": {"wait_s": waited, "busy_s": time.perf_counter() - start - waited},
            }  # fmt: skip
            text = encode_json(data)
            after = torch.get_rng_state() if rng is not None else None
            tensors = [_header(BATCH, k, text.numel(), FLAG_RNG if after is not None else 0)]
            tensors += [pack_rollout(buffer), text] + ([after] if after is not None else [])
            sending.append((k, [_send(t, learner) for t in tensors], tensors))
    except Exception as err:
        text = encode_json({"error": f"{type(err).__name__}: {err}"})
        tensors = [_header(ERROR, -1, text.numel()), text]
        sending.append((-1, [_send(t, learner) for t in tensors], tensors))
        inbox.wait_for_stop()  # the learner ends the job (and reads what is in flight)
        torch.distributed.send(_header(DONE), learner)
        raise
    inbox.wait_for_stop()
    torch.distributed.send(_header(DONE), learner)
    for _, works, _ in sending:
        for work in works:
            work.wait()
