"""Identity resolution on its own: normalisation of identifiers, and the deterministic rules
that say which customer an event belongs to and which profiles it merges."""

from __future__ import annotations

import itertools

import pytest

from nba.errors import FailedPrecondition, InvalidArgument, field_violations
from nba.policy.profile import IdentifierKind
from nba.profiles.identity import Candidate, IdentityRules, Resolution, resolve

RULES = IdentityRules()


def test_identifiers_are_normalised_and_non_values_ignored() -> None:
    assert RULES.normalise("email", " Ada.Lovelace @Example.COM") == "ada.lovelace@example.com"
    assert RULES.normalise("phone", "020 7946 0018") == "+442079460018"
    assert RULES.normalise("phone", "+44 (0)20 7946 0018") == "+442079460018"
    assert RULES.normalise("phone", "+1 415-555-0100") == "+14155550100"
    assert IdentityRules(default_region="US").normalise("phone", "(415) 555-0100") == "+14155550100"
    assert RULES.normalise("crm_id", "  CRM-0042 ") == "CRM-0042"  # ids keep their case
    for nothing in ("", "  ", "null", "NULL", "undefined", "None", "n/a", "0", "000-000", "+00 0000"):
        assert RULES.normalise("phone", nothing) is None, nothing
        assert RULES.normalise("crm_id", nothing) is None, nothing
    assert RULES.normalise_all({"email": "A@B.CO", "phone": "null", "device_id": "d-1"}) == {
        "email": "a@b.co",
        "device_id": "d-1",
    }


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("email", "not-an-address", "identities.email: 'not-an-address' is not an e-mail address"),
        ("phone", "call me", "identities.phone: 'call me' is not a phone number"),
        ("phone", "12", "identities.phone: '12' is not a possible phone number"),
        ("shoe_size", "42", "identities.shoe_size: unknown identifier kind 'shoe_size'; declared kinds: cookie_id, crm_id"),
        ("crm_id", "a\x00b", "identities.crm_id: contains a control character"),
    ],
)
def test_a_value_that_cannot_be_its_kind_is_refused_naming_the_field(kind: str, value: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        RULES.normalise(kind, value)
    assert field_violations(caught.value)[0][0] == f"identities.{kind}"  # as a client sees it


class World:
    """Known customers and their identifiers, as storage would answer."""

    def __init__(self, *customers: tuple[str, float, dict[str, str]]) -> None:
        self.customers = {c: Candidate(c, t, {k: v for k, v in ids.items() if RULES.unique(k)}) for c, t, ids in customers}
        self.ids = {c: ids for c, _, ids in customers}
        self.apart: set[frozenset[str]] = set()
        self.fresh = itertools.count(1)

    def resolve(self, customer_id: str | None = None, **identities: str) -> Resolution:
        return resolve(
            RULES,
            customer_id,
            RULES.normalise_all(identities),
            lambda kind, value: [self.customers[c] for c, ids in self.ids.items() if ids.get(kind) == value],
            self.customers.get,
            lambda a, b: frozenset((a, b)) in self.apart,
            lambda: f"new-{next(self.fresh)}",
        )


def test_an_event_under_a_known_identifier_belongs_to_its_customer() -> None:
    world = World(("c-1", 1.0, {"email": "ada@example.com"}))
    assert world.resolve(email="ADA@example.com").customer_id == "c-1"
    assert world.resolve("c-1").customer_id == "c-1"
    fresh = world.resolve(email="bob@example.com")
    assert fresh.new and fresh.customer_id == "new-1" and fresh.identities == {"email": "bob@example.com"}
    named = world.resolve("c-9", email="bob@example.com")
    assert named.new and named.customer_id == "c-9"


def test_an_event_linking_two_customers_merges_them_into_the_oldest() -> None:
    world = World(("c-2", 2.0, {"email": "ada@example.com"}), ("c-1", 1.0, {"phone": "+442079460018"}))
    linked = world.resolve(email="ada@example.com", phone="020 7946 0018")
    assert (linked.customer_id, linked.merged, linked.new) == ("c-1", ("c-2",), False)
    # whichever id the event names, the survivor is the oldest profile: stable
    assert world.resolve("c-2", phone="+442079460018").customer_id == "c-1"
    # a new id named with a known e-mail is absorbed too (it resolves to the survivor)
    named = world.resolve("c-new", email="ada@example.com")
    assert (named.customer_id, named.merged) == ("c-2", ("c-new",))


def test_a_shared_device_does_not_merge_two_people() -> None:
    world = World(("c-1", 1.0, {"device_id": "tablet"}), ("c-2", 2.0, {"device_id": "tablet"}))
    own = world.resolve("c-2", device_id="tablet")
    assert (own.customer_id, own.merged) == ("c-2", ())
    with pytest.raises(FailedPrecondition, match=r"identities.device_id: shared by 2 customers \(c-1, c-2\)"):
        world.resolve(device_id="tablet")
    alone = World(("c-1", 1.0, {"device_id": "laptop"}))
    assert alone.resolve(device_id="laptop").customer_id == "c-1"  # one owner: found, not guessed


def test_different_values_of_a_unique_kind_never_merge() -> None:
    world = World(("c-1", 1.0, {"crm_id": "A", "email": "shared@example.com"}), ("c-2", 2.0, {"crm_id": "B"}))
    event = world.resolve(email="shared@example.com", crm_id="B")
    assert event.customer_id == "c-2"  # the unique id names the customer
    assert event.merged == () and event.apart == ("c-1",)
    # an event naming c-1 with another CRM id keeps c-1's own, and does not take B
    kept = world.resolve("c-1", crm_id="B", email="shared@example.com")
    assert kept.customer_id == "c-1" and "crm_id" not in kept.identities and kept.apart == ("c-2",)
    # the same value on both sides is the same customer
    same = World(("c-1", 1.0, {"crm_id": "A"}), ("c-2", 2.0, {"crm_id": "A", "email": "x@example.com"}))
    assert same.resolve(email="x@example.com", crm_id="A").merged == ("c-2",)


def test_an_unmerged_pair_is_not_merged_again() -> None:
    world = World(("c-1", 1.0, {"email": "a@example.com"}), ("c-2", 2.0, {"phone": "+442079460018"}))
    world.apart.add(frozenset(("c-1", "c-2")))
    event = world.resolve(email="a@example.com", phone="+442079460018")
    assert (event.customer_id, event.merged, event.apart) == ("c-1", (), ("c-2",))


def test_resolution_does_not_depend_on_the_order_identifiers_arrive_in() -> None:
    customers = [
        ("c-3", 3.0, {"email": "a@example.com"}),
        ("c-1", 1.0, {"phone": "+442079460018"}),
        ("c-2", 2.0, {"loyalty_id": "L1"}),
    ]
    outcomes = set()
    for order in itertools.permutations(customers):
        world = World(*order)
        r = world.resolve(loyalty_id="L1", email="a@example.com", phone="+442079460018")
        outcomes.add((r.customer_id, tuple(sorted(r.merged))))
    assert outcomes == {("c-1", ("c-2", "c-3"))}


def test_a_kind_can_be_declared_not_to_merge() -> None:
    rules = IdentityRules({"email": IdentifierKind("email", merges=False, format="email")})
    assert not rules.merging("email") and rules.normalise("email", "A@B.CO") == "a@b.co"


def test_a_unique_value_a_customer_kept_apart_holds_is_not_attached_to_another() -> None:
    """(Found in review.) P has no CRM id; B holds C1 and was unmerged from P: an event for P
    carrying C1 must not give C1 a second holder."""
    world = World(("P", 1.0, {"email": "p@example.com"}), ("B", 2.0, {"crm_id": "C1"}))
    world.apart.add(frozenset(("P", "B")))
    event = world.resolve("P", crm_id="C1")
    assert event.customer_id == "P" and event.apart == ("B",) and "crm_id" not in event.identities


def test_placeholder_phone_numbers_after_a_country_code_are_no_identifier() -> None:
    for placeholder in ("+44 0000 000000", "+1 000-000-0000", "(null)", "#N/A"):
        assert RULES.normalise("phone", placeholder) is None, placeholder


def test_a_unique_kind_that_does_not_merge_and_names_several_customers_answers_with_the_list() -> None:
    rules = IdentityRules({"household_card": IdentifierKind("household_card", merges=False, unique=True)})
    owners = {"c-1": Candidate("c-1", 1.0, {"household_card": "H-1"}), "c-2": Candidate("c-2", 2.0, {"household_card": "H-1"})}

    def run(**identities: str) -> Resolution:
        return resolve(
            rules,
            None,
            rules.normalise_all(identities),
            lambda kind, value: [c for c in owners.values() if c.unique_values.get(kind) == value],
            owners.get,
            lambda a, b: False,
            lambda: "new-1",
        )

    with pytest.raises(FailedPrecondition, match=r"identities.household_card: shared by 2 customers \(c-1, c-2\)"):
        run(household_card="H-1")  # not the oldest: a guess
    del owners["c-2"]
    assert run(household_card="H-1").customer_id == "c-1"  # one holder: found
