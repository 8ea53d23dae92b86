"""One BLAS thread around the learners' calls (``bandit.blas``): set and given back when the
process runs more, and nothing done at all once the process is pinned to one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from bandit import LinearBandit, blas
from bandit.blas import single_thread


class RecordingLibrary:
    """Stands in for a BLAS library's controller (threadpoolctl's), recording what is asked."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.calls: list[tuple[str, Any]] = []

    def get_num_threads(self) -> int:
        self.calls.append(("get", None))
        return self.threads

    def set_num_threads(self, threads: int) -> None:
        self.calls.append(("set", threads))
        self.threads = threads


@pytest.fixture
def library(monkeypatch: pytest.MonkeyPatch) -> RecordingLibrary:
    fake = RecordingLibrary(4)
    monkeypatch.setattr(blas, "_libraries", [fake])
    monkeypatch.setattr(blas, "_pinned", False)
    monkeypatch.setattr(blas, "_depth", 0)
    monkeypatch.setattr(blas, "_saved", [])
    return fake


def test_a_block_runs_on_one_thread_and_gives_back_what_it_found(library: RecordingLibrary) -> None:
    with single_thread():
        assert library.threads == 1
        with single_thread():  # re-entrant: the inner block neither sets nor gives back
            assert library.threads == 1
        assert library.threads == 1
    assert library.threads == 4
    assert library.calls == [("get", None), ("set", 1), ("set", 4)]


def test_once_pinned_a_block_asks_nothing(library: RecordingLibrary) -> None:
    library.threads = 1
    blas.pin(1)
    for _ in range(3):
        with single_thread():
            pass
    assert library.calls == []
    assert blas._depth == 0


def test_a_block_running_when_the_process_is_pinned_gives_back_one_thread(library: RecordingLibrary) -> None:
    with single_thread():
        library.threads = 1  # what limit_blas_threads(1) does to the libraries meanwhile
        blas.pin(1)
    assert library.threads == 1
    assert blas._depth == 0
    blas.pin(4)  # unpinned again: blocks set and give back as before
    library.threads = 4
    with single_thread():
        assert library.threads == 1
    assert library.threads == 4


def test_the_real_libraries_run_one_thread_inside_and_their_count_after() -> None:
    controller = ThreadpoolController()
    if not controller.select(user_api="blas").lib_controllers:
        pytest.skip("no BLAS library found by threadpoolctl")
    with threadpool_limits(limits=2, user_api="blas"):
        before = [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
        learner = LinearBandit(seed=1)
        with single_thread():
            inside = [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
        learner.update("a", {"x": 1.0}, 1.0)
        assert learner.pull(["a", "b"], {"x": 1.0}).slots
        after = [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
    assert inside == [1] * len(before)
    assert after == before
    assert np.isfinite(learner.distribution(["a", "b"], {"x": 1.0})[0]).all()
