"""CEL rules on their own: compiled once, evaluated against one activation per request, bound
per offer, batched, and a rule that cannot be evaluated is False with the reason, never an
error for the caller."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nba.policy.rules import NEVER_DAYS, Rule, RuleBatch, RuleError, RuleSyntaxError, activation, cel_literal

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FEATURES = {"customer.age": 40.0, "customer.flags.fraud_risk": False, "customer.products": ["savings"]}


def context(features: dict[str, object] = FEATURES, **contacts: dict[str, float]):  # type: ignore[no-untyped-def]
    return activation(features, "web", "c-1", NOW, contacts.get("contacts"), contacts.get("groups"))


def test_a_rule_reads_the_customer_the_channel_and_the_time() -> None:
    assert Rule("customer.age >= 18 && !customer.flags.fraud_risk").evaluate(context()) == (True, None)
    assert Rule('"savings" in customer.products').evaluate(context()) == (True, None)
    assert Rule('channel == "web" && customer_id == "c-1"').evaluate(context()) == (True, None)
    assert Rule('now > timestamp("2026-01-01T00:00:00Z")').evaluate(context()) == (True, None)
    assert Rule("customer.age < 18").evaluate(context()) == (False, None)


def test_a_rule_that_cannot_be_evaluated_is_false_with_the_reason() -> None:
    result, why = Rule("customer.income > 1000").evaluate(context())  # no such field in this context
    assert result is False and why
    result, why = Rule("customer.age").evaluate(context())  # not a boolean
    assert result is False and why == "returned 40.0, not a boolean"


def test_a_rule_that_does_not_compile_says_where() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        Rule("customer.age >= ")
    assert caught.value.column is not None and caught.value.column >= 1
    with pytest.raises(RuleSyntaxError):
        Rule("unknown_variable > 1")


def test_a_rule_bound_to_an_offer_reads_that_offers_contacts() -> None:
    template = Rule("contacts.impressed < 3 && offer.value > 10.0")
    assert template.per_offer and template.uses_contacts
    gold = template.bind({"id": "gold", "group": "cards", "value": 100.0})
    cheap = template.bind({"id": "cheap", "group": "cards", "value": 5.0})
    seen = context(contacts={"gold": {"impressed": 3.0}})
    assert gold.evaluate(seen) == (False, None)  # shown three times already
    assert cheap.evaluate(seen) == (False, None)  # its value is too low
    assert gold.evaluate(context(contacts={})) == (True, None)  # never shown: the counts are zero
    never = template.bind({"id": "x", "group": "g", "value": 50.0}).source
    assert "_no_contacts" in never and NEVER_DAYS == 36500.0


def test_a_batch_gives_each_rules_result_or_its_error_in_order() -> None:
    batch = RuleBatch([Rule("customer.age >= 18"), Rule("customer.missing == 1"), Rule("customer.age < 18")])
    results = batch.evaluate(context())
    assert results[0] is True and results[2] is False
    assert isinstance(results[1], RuleError)


def test_literals_round_trip_into_cel() -> None:
    value = {"id": 'quote"d', "tags": ["a", "b"], "value": 1.5, "live": True, "none": None}
    rule = Rule(f"{cel_literal(value)}.id == 'quote\"d' && {cel_literal(value)}.tags.size() == 2")
    assert rule.evaluate(context()) == (True, None)
