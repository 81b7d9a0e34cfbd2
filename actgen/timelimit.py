"""A wall-clock limit on work over untrusted input (parsing a formula, compiling it)."""
from __future__ import annotations

import ctypes
import signal
import threading
from contextlib import contextmanager


class TooSlow(BaseException):
    """Raised by the timer into the work it limits (a BaseException: no `except Exception` in
    sympy or in the rewrites' fallbacks swallows it)."""


@contextmanager
def time_limit(seconds: float):
    """Raise TooSlow in the work after seconds: by SIGALRM in the main thread; in another
    thread, or where the caller runs an interval timer of its own, by a timer thread that
    raises it into this one (between two bytecodes, as a signal handler would)."""
    if (threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0):
        with _alarm(seconds):
            yield
    else:
        with _raised_by_timer(seconds):
            yield


@contextmanager
def _alarm(seconds: float):
    def fire(signum, frame):
        raise TooSlow()
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _raised_by_timer(seconds: float):
    """TooSlow set as this thread's pending exception (PyThreadState_SetAsyncExc) by a timer
    thread; one set as the work ended, not yet raised, is cleared (the work was in time)."""
    target, lock, state = threading.get_ident(), threading.Lock(), {"done": False, "fired": False}

    def fire():
        with lock:
            if not state["done"]:
                state["fired"] = True
                _set_async_exc(target, TooSlow)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
            if state["fired"]:
                _set_async_exc(target, None)
        timer.cancel()


def _set_async_exc(thread_id: int, exc) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)
