"""The context schema: field names and types checked, and contexts sampled from it."""

from __future__ import annotations

import pytest

from nba.policy.schema import ContextSchema, FieldSpec, field_paths


def schema() -> ContextSchema:
    return ContextSchema(
        {
            "customer.age": FieldSpec(type="number", min=0, max=120),
            "customer.segment": FieldSpec(type="string", values=["a", "b"]),
            "customer.products": FieldSpec(type="list<string>", values=["x", "y", "z"]),
            "customer.extra": FieldSpec(type="map"),
        }
    )


def test_paths_are_read_outside_string_literals_and_method_calls() -> None:
    source = '"customer.fake" != customer.segment && customer.products.exists(p, p == "x") && size(context.customer.products) > 0'
    assert [p for p, _ in field_paths(source)] == ["customer.segment", "customer.products", "customer.products"]


@pytest.mark.parametrize(
    ("path", "known"),
    [
        ("customer.age", True),
        ("customer", True),
        ("customer.agee", False),
        ("customer.age.value", False),
        ("customer.extra.anything.below", True),
        ("other", False),
    ],
)
def test_known_paths(path: str, known: bool) -> None:
    assert schema().knows(path) is known


def test_samples_cover_declared_values_and_types() -> None:
    samples = schema().samples(50)
    assert len(samples) == 50
    assert {s["customer"]["segment"] for s in samples} == {"a", "b"}
    assert all(0 <= s["customer"]["age"] <= 120 for s in samples)
    assert all(isinstance(s["customer"]["products"], list) for s in samples)
    assert any(s["customer"]["products"] == [] for s in samples)


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ValueError, match="min .* is greater than max"):
        FieldSpec(type="number", min=3, max=1)
    with pytest.raises(ValueError, match="numbers only"):
        FieldSpec(type="string", min=1)
