"""The conformance suite every learner in ``bandit`` must pass (as river's ``checks``), and the
default learner's learning quality on a known problem."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import bandit
from bandit import LinearBandit, UniformRandom

ARMS = ["a", "b", "c", "d"]


def contexts(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ctx = {
            "customer": {
                "age": float(rng.integers(18, 90)),
                "segment": str(rng.choice(["young", "family", "senior"])),
                "flags": {"churn_risk": bool(rng.random() < 0.3)},
                "products": list(rng.choice(["card", "loan", "savings"], size=int(rng.integers(0, 3)), replace=False)),
            }
        }
        out.append(ctx)
    return out


def trained(cls: type[bandit.Learner], seed: int = 7) -> bandit.Learner:
    learner = cls(seed=seed)
    for i, ctx in enumerate(contexts(60)):
        learner.update(ARMS[i % len(ARMS)], ctx, float(i % 3 == 0))
    return learner


def test_every_learner_is_listed() -> None:
    public = {
        obj
        for obj in vars(bandit).values()
        if isinstance(obj, type) and issubclass(obj, bandit.Learner) and obj is not bandit.Learner
    }
    assert public == set(bandit.LEARNERS)


@pytest.fixture(params=bandit.LEARNERS, ids=lambda c: c.__name__)
def learner_cls(request: pytest.FixtureRequest) -> type[bandit.Learner]:
    return request.param


def test_pickle_round_trip_keeps_scores_and_choices(learner_cls: type[bandit.Learner]) -> None:
    learner = trained(learner_cls)
    clone = pickle.loads(pickle.dumps(learner))
    for ctx in contexts(10, seed=1):
        np.testing.assert_allclose(clone.scores(ARMS, ctx), learner.scores(ARMS, ctx))
        assert clone.pull(ARMS, ctx, k=2).chosen == learner.pull(ARMS, ctx, k=2).chosen
    assert clone.version == learner.version


def test_same_seed_same_choices(learner_cls: type[bandit.Learner]) -> None:
    one, two = trained(learner_cls, seed=11), trained(learner_cls, seed=11)
    picks_one = [one.pull(ARMS, ctx, k=3).chosen for ctx in contexts(30, seed=2)]
    picks_two = [two.pull(ARMS, ctx, k=3).chosen for ctx in contexts(30, seed=2)]
    assert picks_one == picks_two
    other = trained(learner_cls, seed=12)
    assert picks_one != [other.pull(ARMS, ctx, k=3).chosen for ctx in contexts(30, seed=2)]


def test_learning_does_not_mutate_its_input(learner_cls: type[bandit.Learner]) -> None:
    learner = learner_cls(seed=1)
    for ctx in contexts(20):
        before = copy.deepcopy(ctx)
        learner.pull(ARMS, ctx, k=2)
        learner.update("a", ctx, 1.0)
        learner.update("a", ctx, 0.5, previous_reward=1.0)
        assert ctx == before


def test_features_that_appear_and_disappear(learner_cls: type[bandit.Learner]) -> None:
    learner = learner_cls(seed=1)
    shapes = [
        {},
        {"customer": {"age": 40.0}},
        {"customer": {"segment": "new", "extra": {"deep": {"er": True}}}},
        {"customer": {"age": None, "tags": []}},
        {"other": [1.0, "x", {"nested": 1}]},
    ]
    for i, ctx in enumerate(shapes * 3):
        draw = learner.pull(ARMS, ctx, k=2)
        assert len(draw.chosen) == 2
        learner.update(draw.chosen[0], ctx, float(i % 2))
        assert np.all(np.isfinite(learner.scores(ARMS, ctx)))


def test_propensities_are_exact_distributions(learner_cls: type[bandit.Learner]) -> None:
    learner = trained(learner_cls)
    for ctx in contexts(20, seed=3):
        draw = learner.pull(ARMS, ctx, k=3)
        assert draw.probabilities.sum() == pytest.approx(1.0)
        assert np.all(draw.probabilities > 0)
        first_index, first_p = draw.slots[0]
        assert first_p == pytest.approx(draw.probabilities[first_index])
        assert len(set(draw.chosen)) == 3
        assert all(0 < p <= 1 for _, p in draw.slots)


def test_k_larger_than_arms_returns_every_arm_once(learner_cls: type[bandit.Learner]) -> None:
    draw = learner_cls(seed=1).pull(ARMS, {}, k=50)
    assert sorted(draw.chosen) == sorted(ARMS)
    assert draw.slots[-1][1] == 1.0


def test_no_arms_draws_nothing(learner_cls: type[bandit.Learner]) -> None:
    draw = learner_cls(seed=1).pull([], {"x": 1.0}, k=3)
    assert draw.chosen == [] and len(draw.probabilities) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda learner: learner.update("a", {}, float("nan")), "reward must be a finite number"),
        (lambda learner: learner.update("a", {}, 1.0, previous_reward=float("inf")), "previous_reward"),
        (lambda learner: learner.pull(ARMS, {}, k=-1), "k must be non-negative"),
        (lambda learner: learner.pull(ARMS, {}, weights=[1.0]), "weights has 1 values for 4 arms"),
    ],
)
def test_invalid_input_is_refused_by_name(learner_cls: type[bandit.Learner], call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(learner_cls(seed=1))


@pytest.mark.parametrize(
    ("context", "named"),
    [
        ({"customer": {"age": float("nan")}}, "customer.age is nan"),
        ({"customer.age": float("inf")}, "customer.age is inf"),
        ({"customer": {"scores": [1.0, float("-inf")]}}, r"customer.scores\[1\] is -inf"),
        ({"orders": [{"total": np.float64("nan")}]}, r"orders\[0\].total is nan"),
    ],
)
def test_an_update_with_a_non_finite_context_number_is_refused_by_name(
    learner_cls: type[bandit.Learner], context: dict, named: str
) -> None:
    learner = trained(learner_cls)
    probe = contexts(3, seed=4)
    before = [learner.scores(ARMS, ctx) for ctx in probe]
    with pytest.raises(ValueError, match=f"context: {named}"):
        learner.update("a", context, 1.0)
    assert learner.n_updates == 60
    for ctx, scores in zip(probe, before, strict=True):
        np.testing.assert_array_equal(learner.scores(ARMS, ctx), scores)


def assert_sane(learner: bandit.Learner) -> None:
    """Everything a caller can read from the learner is finite, and its draws are distributions."""
    assert learner.state_is_finite()
    for ctx in contexts(10, seed=6):
        assert np.all(np.isfinite(learner.scores(ARMS, ctx)))
        draw = learner.pull(ARMS, ctx, k=3, weights=[1.0, 2.0, 1e9, 0.5])
        assert np.all(np.isfinite(draw.scores))
        assert draw.probabilities.sum() == pytest.approx(1.0)
        assert all(0 < p <= 1 for _, p in draw.slots)
    clone = pickle.loads(pickle.dumps(learner))
    assert clone.state_is_finite()


@pytest.mark.parametrize(
    "updates",
    [
        [("a", 1e308, None)],
        [("a", -1e308, None)],
        [("b", 1e200, None)],
        [("a", 1.0, None), ("a", 1e308, 1.0)],  # a revision to an absurd reward
        [("a", 1.0, None), ("a", -1e308, 1e308)],  # a revision whose difference overflows
        [("c", 1e99, None)] * 200,  # each finite and bounded alone, not together
    ],
    ids=["1e308", "-1e308", "1e200", "revised-to-1e308", "difference-overflows", "accumulated"],
)
def test_no_update_can_leave_the_state_non_finite(learner_cls: type[bandit.Learner], updates) -> None:
    """Finite rewards so large that the sums a learner keeps would overflow: each update is
    either learned with the state still finite, or refused with ValueError changing nothing."""
    learner = trained(learner_cls)
    probe = contexts(3, seed=4)
    for arm, reward, previous in updates:
        before = [learner.scores(ARMS, ctx) for ctx in probe]
        count = learner.n_updates
        try:
            learner.update(arm, probe[0], reward, previous_reward=previous)
        except ValueError as exc:
            assert "reward" in str(exc)
            assert learner.n_updates == count
            for ctx, scores in zip(probe, before, strict=True):
                np.testing.assert_array_equal(learner.scores(ARMS, ctx), scores)
        assert learner.state_is_finite()
    assert_sane(learner)
    learner.update("a", probe[1], 1.0)  # and it goes on learning ordinary rewards
    assert_sane(learner)


def test_a_corrupted_model_still_draws_exact_finite_probabilities() -> None:
    """Defence in depth: a model poisoned by an older version (restored from its snapshot) says
    so, and exploration treats non-finite scores as ties rather than answering NaN."""
    learner = trained(LinearBandit)
    learner._model._theta[1:] = np.nan
    assert not learner.state_is_finite()
    draw = learner.pull(ARMS, contexts(1)[0], k=2)
    assert draw.probabilities.tolist() == [0.25, 0.25, 0.25, 0.25]
    assert [p for _, p in draw.slots] == [pytest.approx(1 / 4), pytest.approx(1 / 3)]


def test_revising_a_reward_equals_learning_the_final_one() -> None:
    """An impression (0) later revised to an acceptance (1) is one observation of 1, once the
    scaling of numbers has warmed up (before, it moves between the two)."""
    direct, revised = LinearBandit(seed=1, warmup=5), LinearBandit(seed=1, warmup=5)
    for learner in (direct, revised):
        for ctx in contexts(10, seed=3):
            learner.update("warm", ctx, 0.0)
    for ctx in contexts(40):
        direct.update("a", ctx, 1.0)
        revised.update("a", ctx, 0.0)
        revised.update("a", ctx, 1.0, previous_reward=0.0)
    for ctx in contexts(5, seed=9):
        np.testing.assert_allclose(revised.scores(ARMS, ctx), direct.scores(ARMS, ctx), atol=1e-9)
    assert revised.count("a") == direct.count("a") == 40


def test_linear_bandit_learns_each_segments_best_arm() -> None:
    truth = {"young": [0.35, 0.05, 0.05, 0.10], "family": [0.05, 0.35, 0.10, 0.05], "senior": [0.05, 0.05, 0.05, 0.35]}
    rng = np.random.default_rng(5)
    learner, uniform = LinearBandit(seed=3), UniformRandom(seed=3)
    hits = {"linear": 0, "uniform": 0}
    rounds = 3000
    for i, ctx in enumerate(contexts(rounds, seed=4)):
        segment = ctx["customer"]["segment"]
        for name, model in (("linear", learner), ("uniform", uniform)):
            arm = model.pull(ARMS, ctx).chosen[0]
            reward = float(rng.random() < truth[segment][ARMS.index(arm)])
            model.update(arm, ctx, reward)
            if i >= rounds // 2 and ARMS.index(arm) == int(np.argmax(truth[segment])):
                hits[name] += 1
    late = rounds - rounds // 2
    assert hits["uniform"] / late == pytest.approx(0.25, abs=0.05)
    assert hits["linear"] / late > 0.8


def test_uniform_random_propensities_are_one_over_k() -> None:
    draw = UniformRandom(seed=1).pull(ARMS, {}, k=2)
    assert [p for _, p in draw.slots] == [pytest.approx(1 / 4), pytest.approx(1 / 3)]


def test_a_new_arm_starts_from_what_similar_arms_taught() -> None:
    learner = LinearBandit(seed=1, shared=5.0)
    learner.set_arm_attributes({"a": ["group=cards"], "b": ["group=cards"], "c": ["group=loans"], "new": ["group=cards"]})
    for ctx in contexts(200):
        learner.update("a", ctx, 1.0)
        learner.update("b", ctx, 0.8)
        learner.update("c", ctx, 0.0)
    scores = dict(
        zip(["a", "b", "c", "new"], learner.scores(["a", "b", "c", "new"], contexts(1, seed=8)[0]).tolist(), strict=True)
    )
    assert scores["new"] > 0.5 > scores["c"]  # like its group, not like the prior (0)
    assert scores["a"] > scores["b"]  # arms with evidence keep their own estimates
    plain = LinearBandit(seed=1)
    assert plain.scores(["new"], contexts(1, seed=8)[0])[0] == 0.0
    clone = pickle.loads(pickle.dumps(learner))
    assert clone.scores(["new"], contexts(1, seed=8)[0])[0] == pytest.approx(scores["new"])


def test_forgetting_follows_a_change_of_preference() -> None:
    def after_switch(forget: float) -> float:
        learner = LinearBandit(seed=1, forget=forget, detect_changes=False)
        for _ in range(300):
            learner.update("a", {}, 1.0)
        for _ in range(60):  # then "a" stops paying
            learner.update("a", {}, 0.0)
        return float(learner.scores(["a"], {})[0])

    assert after_switch(0.95) < 0.1 < after_switch(1.0)


def test_forgetting_stays_stable_over_many_observations() -> None:
    """Discounting must not reach the regularisation, or unseen directions blow up."""
    rng = np.random.default_rng(0)
    learner = LinearBandit(seed=1, forget=0.98, shared=3.0)
    learner.set_arm_attributes({"a": ["group=g"], "b": ["group=g"]})
    for i in range(6000):
        ctx = {"seg": str(rng.choice(["x", "y", "z"])), "vip": bool(rng.random() < 0.1)}
        learner.update("a" if i % 2 else "b", ctx, float(rng.random() < 0.3))
    scores = learner.scores(["a", "b"], {"seg": "x", "vip": False})
    assert np.all(np.abs(scores - 0.3) < 0.2), scores


def test_a_context_changed_in_place_is_not_served_a_stale_vector() -> None:
    learner = LinearBandit(seed=1, warmup=1)
    for _ in range(50):
        learner.update("a", {"seg": "gold"}, 1.0)
        learner.update("a", {"seg": "silver"}, 0.0)
    ctx = {"seg": "gold"}
    gold = learner.scores(["a"], ctx)[0]
    ctx["seg"] = "silver"
    assert learner.scores(["a"], ctx)[0] == pytest.approx(learner.scores(["a"], {"seg": "silver"})[0])
    assert gold > 0.8


def test_an_arm_given_no_attributes_stands_alone() -> None:
    learner = LinearBandit(seed=1, shared=3.0, optimism=0.0)  # the shared model alone
    learner.set_arm_attributes({"a": ["group=g"], "fallback": None})
    for ctx in contexts(100):
        learner.update("fallback", ctx, 1.0)  # a fallback everyone accepts...
    assert learner.scores(["a"], contexts(1, seed=5)[0])[0] == pytest.approx(0.0, abs=1e-9)  # ...teaches "a" nothing
