"""Ctrl-C during `textrlhf train`: finish the iteration, save a checkpoint, then stop.

A KeyboardInterrupt in the middle of an update would leave nothing newer than the last periodic
checkpoint. Instead, the first Ctrl-C only asks the loop to stop at the next iteration boundary,
where the state is whole: the trainer saves it and writes the summary, and `--resume` continues
the run exactly as if it had never stopped. A second Ctrl-C stops at once, as usual.

Under torchrun the terminal's Ctrl-C reaches the launcher, which sends SIGINT to every rank (and
kills them 30 s later if they are still running); the ranks agree on stopping with one
all-reduce per iteration, so they all stop after the same iteration.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

MESSAGE = (
    "\nCtrl-C: stopping after this iteration and saving a checkpoint "
    "(Ctrl-C again to stop at once, without saving)"
)


class StopRequest:
    """Truthy once a stop was asked for."""

    def __init__(self) -> None:
        self.requested = False

    def __bool__(self) -> bool:
        return self.requested


@contextlib.contextmanager
def stop_on_first_interrupt(enabled: bool = True, announce: bool = True) -> Iterator[StopRequest]:
    """While active, the first SIGINT sets the returned flag (and says so on stderr) instead of
    raising; the next one raises KeyboardInterrupt. The previous handler is restored on exit.
    `announce`: say so on stderr (rank 0 only, under torchrun).

    Off (the flag stays False, Ctrl-C raises at once) when not `enabled` or outside the main
    thread, where Python cannot install signal handlers."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        if announce:
            print(MESSAGE, file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
