"""Ctrl-C around the start of worker processes: held back, never lost, raised once.

Starting workers is the one moment a Ctrl-C can do harm in a way users see: a child that gets it while it still
imports prints a traceback, and a parent that dies while a child still unpickles its queues removes their
semaphores under it (another traceback, from the child). :func:`ctrl_c_held` closes that window:

* SIGINT is blocked in the calling thread, so every process started inside the block inherits the blocked mask
  through fork and exec, and a terminal's Ctrl-C (sent to the whole process group) stays pending there until the
  child has installed its own handling (the engine's and the aligner's workers ignore it);
* in the main process, a Ctrl-C delivered to any thread is recorded instead of raised midway, and raised as one
  ``KeyboardInterrupt`` when the block ends, after the children have started.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C back while the block runs (see the module's docstring); outside the main thread only the
    mask is set, since Python's handlers belong to the main thread."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # first: its own start *unblocks* SIGINT, which would undo the mask
    seen: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, lambda sig, frame: seen.append(sig)) if main else None
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending Ctrl-C reaches the recorder now
        if main:
            signal.signal(signal.SIGINT, before)
            if seen and callable(before):
                before(signal.SIGINT, None)  # the handler that was there: Python's raises KeyboardInterrupt
            elif seen and before != signal.SIG_IGN:
                raise KeyboardInterrupt
