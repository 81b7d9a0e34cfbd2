"""A wall-clock limit on work over untrusted input (parsing a formula, compiling it)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class TooSlow(BaseException):
    """Raised by the timer into the work it limits (a BaseException: no `except Exception` in
    sympy or in the rewrites' fallbacks swallows it)."""


@contextmanager
def time_limit(seconds: float):
    """Raise TooSlow in the main thread after seconds (no limit elsewhere, nor where a timer
    runs already: the caller's)."""
    if (threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer")
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
        yield
        return

    def fire(signum, frame):
        raise TooSlow()
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
