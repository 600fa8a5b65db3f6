"""Ctrl-C and SIGTERM during `textrlhf train`: finish the iteration, save a checkpoint, then stop.

A KeyboardInterrupt in the middle of an update would leave nothing newer than the last periodic
checkpoint. Instead, the first Ctrl-C (SIGINT), SIGTERM (what `timeout`, `kill`, SLURM
preemption, Kubernetes and `docker stop` send) or SIGUSR1 (the warning a SLURM job asks for with
`--signal=USR1@<seconds>`) only asks the loop to stop at the next iteration boundary,
where the state is whole: the trainer saves it and writes the summary, and `--resume` continues
the run exactly as if it had never stopped. A second signal stops at once.

Under torchrun the launcher passes SIGINT and SIGTERM on to every rank (and kills them 30 s later
if they are still running); the ranks agree on stopping with one all-reduce per iteration, so they
all stop after the same iteration.

A signal that is ignored when the process starts (SIGINT under `nohup` or in a background job of
a non-interactive shell) stays ignored: such a run was not meant to be stopped from a terminal.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

# the signals that ask a run to stop, and how messages name them. Not SIGHUP: it comes when the
# terminal is gone, and the stop's messages would fail to reach it (use nohup or tmux); not
# SIGKILL, which no process can catch (the last checkpoint stays whole: checkpoints are atomic)
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGUSR1: "SIGUSR1"}


def signal_number(label: str) -> int:
    """The signal a label of `signal_label` names."""
    return next(s for s, name in STOP_SIGNALS.items() if name == label)


def signal_label(signum: int) -> str:
    """How messages name a stop signal: "Ctrl-C" for SIGINT, else its name."""
    return STOP_SIGNALS.get(signum, signal.Signals(signum).name)


def message(signum: int) -> str:
    """What rank 0 prints on stderr when the first stop signal arrives."""
    return (
        f"\n{signal_label(signum)}: stopping after this iteration and saving a checkpoint "
        f"({signal_label(signum)} again to stop at once, without saving)"
    )


class StopNow(KeyboardInterrupt):
    """Raised by a stop signal that asks to stop at once (a second one during training, or any
    outside it). A KeyboardInterrupt, so `finally` blocks and cleanup run as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_label(signum))
        self.signum = signum


class StopRequest:
    """Truthy once a stop was asked for; `signum` says by which signal."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __bool__(self) -> bool:
        return self.requested


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handlers(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Install `handler` for every stop signal that is not ignored; restore on exit exactly what
    was there before (also SIG_IGN and foreign handlers)."""
    previous = {}
    for signum in STOP_SIGNALS:
        before = signal.getsignal(signum)
        if before is signal.SIG_IGN or before is None:  # ignored on entry, or not set by Python
            continue
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


@contextlib.contextmanager
def stop_at_once_on_signals() -> Iterator[None]:
    """While active, SIGTERM (like Ctrl-C) raises `StopNow`, so that a command ends through its
    cleanup code (locks, temp files, the half-made run folder) instead of dying where it stands.
    A no-op outside the main thread, where Python cannot install signal handlers."""
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise StopNow(signum)

    with _handlers(handler):
        yield


@contextlib.contextmanager
def stop_on_first_interrupt(enabled: bool = True, announce: bool = True) -> Iterator[StopRequest]:
    """While active, the first SIGINT or SIGTERM sets the returned flag (and says so on stderr)
    instead of raising; the next one raises `StopNow`. The previous handlers are restored on exit;
    a signal ignored on entry stays ignored. `announce`: say so on stderr (rank 0 only, under
    torchrun).

    Off (the flag stays False, signals act as before) when not `enabled` or outside the main
    thread, where Python cannot install signal handlers."""
    stop = StopRequest()
    if not enabled or not _in_main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise StopNow(signum)
        stop.signum = signum
        if announce:
            print(message(signum), file=sys.stderr, flush=True)

    with _handlers(handler):
        yield stop
