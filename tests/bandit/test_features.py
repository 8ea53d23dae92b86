"""Context to features: flattening and hashing."""

from __future__ import annotations

import pickle
import zlib

import numpy as np
import pytest

from bandit import Featurizer, flatten


def test_flatten_is_lossless_for_json_like_input() -> None:
    ctx = {"customer": {"age": 41.0, "flags": {"vip": True, "none": None}, "products": ["a", "b"]}, "channel_hint": "x"}
    flat = flatten(ctx)
    assert flat == {
        "channel_hint": "x",
        "customer.age": 41.0,
        "customer.flags.none": None,
        "customer.flags.vip": True,
        "customer.products": ["a", "b"],
    }
    assert flatten(flat) == flat


def test_numbers_are_standardised_and_clipped() -> None:
    f = Featurizer(n_features=64, clip=3.0)
    for age in (20.0, 30.0, 40.0):
        f.learn_one({"age": age})
    x_mean = f.transform_one({"age": 30.0})
    x_high = f.transform_one({"age": 40.0})
    x_huge = f.transform_one({"age": 4000.0})
    assert np.abs(x_mean[:-1]).sum() == pytest.approx(0.0)
    assert np.abs(x_high[:-1]).sum() == pytest.approx(10 / np.std([20, 30, 40], ddof=1))
    assert np.abs(x_huge[:-1]).max() == pytest.approx(3.0)
    assert x_mean[-1] == 1.0


def test_unseen_numbers_say_nothing_yet() -> None:
    f = Featurizer(n_features=16)
    assert np.abs(f.transform_one({"income": 1e6})[:-1]).sum() == 0.0


def test_strings_booleans_lists_and_missing_values_set_tokens() -> None:
    f = Featurizer(n_features=1024)
    base = f.transform_one({})
    assert np.count_nonzero(base) == 1  # the intercept only
    for ctx in ({"segment": "gold"}, {"vip": True}, {"products": ["card"]}, {"region": None}):
        assert np.count_nonzero(f.transform_one(ctx)) >= 2, ctx
    assert np.count_nonzero(f.transform_one({"vip": False})) == 1
    gold, silver = f.transform_one({"segment": "gold"}), f.transform_one({"segment": "silver"})
    assert not np.array_equal(gold, silver)


def test_hashing_is_stable_across_processes() -> None:
    # CRC-32 of "segment=gold" is fixed; Python's salted hash() would move it per process.
    x = Featurizer(n_features=128).transform_one({"segment": "gold"})
    assert np.flatnonzero(x[:-1]).tolist() == [zlib.crc32(b"segment=gold") % 128]


def test_excluded_fields_are_not_features() -> None:
    f = Featurizer(n_features=256, exclude=["customer.id", "*.email"])
    x = f.transform_one({"customer": {"id": "c-1", "email": "a@b.c"}})
    assert np.count_nonzero(x) == 1


def test_pickle_drops_caches_but_keeps_statistics() -> None:
    f = Featurizer(n_features=32)
    f.learn_one({"age": 10.0})
    f.learn_one({"age": 20.0})
    before = f.transform_one({"age": 15.0, "segment": "x"})
    clone = pickle.loads(pickle.dumps(f))
    np.testing.assert_array_equal(clone.transform_one({"age": 15.0, "segment": "x"}), before)


@pytest.mark.parametrize(("kwargs", "message"), [({"n_features": 0}, "n_features"), ({"clip": 0}, "clip")])
def test_bad_parameters_are_refused(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Featurizer(**kwargs)
