"""One BLAS thread around the learners' own calls, and only around them.

The learners' matrices are small (129 x 129, a few hundred arms at most): a multi-threaded
OpenBLAS spends more waking its threads than computing. Measured on a 2-core machine, a
decision (pull + update) cost 440-720 microseconds with OpenBLAS's default threads against
55 with one. Setting one thread for the whole process would also slow every other BLAS user
in it (an evaluation's large products), so the learners take one thread for the length of
their own calls and give the previous setting back.

``single_thread()`` is that context. It is re-entrant and shared by every thread: the first
caller in sets one thread, the last caller out restores what was set before, so two learners
working at once in two threads do not undo each other. While any learner call runs, other BLAS
users of the process get one thread too: OpenBLAS has one setting per process, not per thread.

It is a best effort for speed, not a guarantee: under OpenBLAS's pthreads build, with several
threads calling in, a call can still run on the previous thread count (measured: 15% of exact
solves with three threads taking turns). Results of an exact solve differ in the last bits with
the thread count, so a program that needs bit-identical models across processes (replicas)
sets one thread for the whole process before its threads start (``limit_blas_threads``; the
service does, and so does ``OPENBLAS_NUM_THREADS=1``).

It costs a few microseconds a call (ctypes calls into each BLAS library loaded, measured at
about 2.5 microseconds each: a library's thread count is asked, and set only when it is not
one), and nothing once ``limit_blas_threads(1)`` has pinned the whole process to one thread
(``pin``): there is then nothing to set or give back. Libraries come from threadpoolctl, which
knows how to find and drive OpenBLAS, MKL and BLIS; it is asked once.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["pin", "single_thread"]

_lock = threading.Lock()
_depth = 0
_saved: list[tuple[Any, int]] = []
_libraries: list[Any] | None = None
#: the whole process runs one BLAS thread (``pin``): blocks set nothing
_pinned = False


def pin(threads: int) -> None:
    """Told by ``bandit.limit_blas_threads`` that every BLAS library now runs ``threads``
    threads for the whole process: with one, ``single_thread`` blocks have nothing to do. A
    block already running gives back ``threads``, not what it found."""
    global _pinned, _saved
    with _lock:
        _pinned = threads == 1
        _saved = [(library, threads) for library, _ in _saved]


def _blas_libraries() -> list[Any]:
    global _libraries
    if _libraries is None:
        import numpy  # noqa: F401  (their BLAS must be loaded to be found)
        import scipy.linalg.blas  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries


class _SingleThread:
    """The context ``single_thread()`` returns (a class: a generator-based context manager
    costs a few microseconds more per call, and every decision enters one)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth, _saved
        if _pinned:  # read without the lock: set once, before the threads that call in start
            return
        with _lock:
            if _depth == 0:
                saved = []
                for library in _blas_libraries():
                    threads = library.get_num_threads()
                    if threads != 1:
                        library.set_num_threads(1)
                        saved.append((library, threads))
                _saved = saved
            _depth += 1

    def __exit__(self, *exc: object) -> None:
        global _depth, _saved
        if _pinned and _depth == 0:
            return
        with _lock:
            if _depth == 0:  # entered while pinned (unpinned since): nothing was set
                return
            _depth -= 1
            if _depth == 0:
                for library, threads in _saved:
                    library.set_num_threads(threads)
                _saved = []


_SINGLE = _SingleThread()


def single_thread() -> _SingleThread:
    """A context that runs its block with one BLAS thread, restoring the previous setting
    after the last concurrent block ends."""
    return _SINGLE
