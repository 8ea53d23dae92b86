"""A learner's state as data (``bandit.state``): every learner in ``bandit`` exports and
imports it exactly, and bytes that are not such a state (a pickle above all) are refused
without running anything."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from test_learners import ARMS, contexts, trained

import bandit
from bandit import LinearBandit, UniformRandom
from bandit.state import FORMAT, LearnerState, dumps, loads


@pytest.fixture(params=bandit.LEARNERS, ids=lambda c: c.__name__)
def learner_cls(request: pytest.FixtureRequest) -> type[bandit.Learner]:
    return request.param


def test_a_state_round_trip_keeps_scores_choices_and_learning(learner_cls: type[bandit.Learner]) -> None:
    learner = trained(learner_cls)
    clone = learner_cls(seed=7)
    clone.import_state(loads(dumps(learner.export_state())))
    assert clone.version == learner.version
    for ctx in contexts(10, seed=1):
        np.testing.assert_array_equal(clone.scores(ARMS, ctx), learner.scores(ARMS, ctx))
        assert clone.pull(ARMS, ctx, k=2).chosen == learner.pull(ARMS, ctx, k=2).chosen
    for i, ctx in enumerate(contexts(30, seed=2)):  # and both go on learning alike, new arms too
        for model in (learner, clone):
            model.update(["a", "e", "f"][i % 3], ctx, float(i % 2))
    for ctx in contexts(5, seed=3):
        np.testing.assert_array_equal(clone.scores([*ARMS, "e", "f"], ctx), learner.scores([*ARMS, "e", "f"], ctx))


def test_the_shared_model_forgetting_and_arm_attributes_come_back_exactly() -> None:
    learner = LinearBandit(seed=1, shared=3.0, forget=0.97, prior=0.05, exclude=["customer.id"])
    learner.set_arm_attributes({"a": ["group=g", "tag=x"], "b": ["group=g"], "fallback": None, 7: ["group=h"]})
    for i, ctx in enumerate(contexts(120)):
        learner.update(["a", "b", "fallback", 7][i % 4], ctx, float(i % 3 == 0))
    clone = LinearBandit(seed=1, shared=3.0, forget=0.97, prior=0.05, exclude=["customer.id"])
    clone.import_state(loads(dumps(learner.export_state())))
    arms = ["a", "b", "fallback", 7, "new"]
    for ctx in contexts(8, seed=4):
        np.testing.assert_array_equal(clone.scores(arms, ctx), learner.scores(arms, ctx))


def test_an_export_is_a_copy_the_learner_does_not_change_afterwards() -> None:
    learner = trained(LinearBandit)
    state = learner.export_state()
    before = {name: array.copy() for name, array in state.arrays.items()}
    for ctx in contexts(20, seed=5):
        learner.update("a", ctx, 1.0)
    assert all(np.array_equal(state.arrays[name], before[name]) for name in before)
    reused = learner.export_state(reuse=state)  # the next export may write into the last one
    assert reused.arrays["arms.ainv"] is state.arrays["arms.ainv"]
    clone = LinearBandit(seed=7)
    clone.import_state(loads(dumps(reused)))
    np.testing.assert_array_equal(clone.scores(ARMS, contexts(1)[0]), learner.scores(ARMS, contexts(1)[0]))


def test_bytes_are_a_numpy_archive_with_a_json_header() -> None:
    data = dumps(trained(LinearBandit).export_state())
    assert data.startswith(b"PK")
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        assert "header" in archive.files and "arms.ainv" in archive.files
        assert f'"format":"{FORMAT}"' in bytes(archive["header"]).decode()


class _Touch:
    """Pickles to a call that creates a file when unpickled: what a forged snapshot could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_is_refused_and_never_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="never loaded"):
        loads(pickle.dumps(_Touch(marker), protocol=protocol))
    assert not marker.exists()


def test_an_archive_with_an_object_array_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    header = np.frombuffer(f'{{"format":"{FORMAT}","kind":"LinearBandit","params":{{}},"meta":{{}}}}'.encode(), np.uint8)
    np.savez(buffer, header=header, evil=np.array([_Touch(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        loads(buffer.getvalue())
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: LearnerState("UniformRandom", s.params, s.meta, s.arrays), "kind: the state is of a UniformRandom"),
        (lambda s: LearnerState(s.kind, {**s.params, "alpha": 2.0}, s.meta, s.arrays), "params: the state was learned"),
        (lambda s: LearnerState(s.kind, s.params, {**s.meta, "n_updates": -1}, s.arrays), "n_updates must be a count"),
        (
            lambda s: LearnerState(s.kind, s.params, s.meta, {k: v for k, v in s.arrays.items() if k != "arms.b"}),
            "'arms.b' is missing",
        ),
        (
            lambda s: LearnerState(s.kind, s.params, s.meta, {**s.arrays, "arms.theta": s.arrays["arms.theta"][:2]}),
            "'arms.theta' has shape",
        ),
        (
            lambda s: LearnerState(s.kind, s.params, s.meta, {**s.arrays, "arms.b": s.arrays["arms.b"] * np.nan}),
            "'arms.b' must hold finite numbers",
        ),
        (
            lambda s: LearnerState(s.kind, s.params, s.meta, {**s.arrays, "arms.count": s.arrays["arms.count"] * 0.5}),
            "'arms.count' must hold integers",
        ),
        (lambda s: LearnerState(s.kind, s.params, {**s.meta, "arms": {"arms": [1.5]}}, s.arrays), "arm id 1.5"),
        (
            lambda s: LearnerState(s.kind, s.params, {**s.meta, "features": {"numeric": [1], "version": 0}}, s.arrays),
            "features.numeric must be a list of distinct feature names",
        ),
    ],
)
def test_a_state_that_does_not_fit_is_refused_by_name_and_changes_nothing(damage, message: str) -> None:
    learner = trained(LinearBandit)
    target = trained(LinearBandit, seed=9)
    target.update("z", contexts(1)[0], 1.0)
    before = target.scores([*ARMS, "z"], contexts(1, seed=6)[0])
    with pytest.raises(ValueError, match=message):
        target.import_state(loads(dumps(damage(learner.export_state()))))
    np.testing.assert_array_equal(target.scores([*ARMS, "z"], contexts(1, seed=6)[0]), before)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a bandit state"),
        (b"PK\x03\x04 not really a zip", "damaged"),
        (dumps(LearnerState("X", {}))[:-30], "damaged"),
    ],
)
def test_bytes_that_are_not_a_state_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loads(data)


def test_arm_ids_json_cannot_give_back_are_refused_on_export() -> None:
    learner = UniformRandom(seed=1)
    learner.update(("a", 1), {}, 1.0)
    with pytest.raises(TypeError, match="neither text nor an integer"):
        learner.export_state()
