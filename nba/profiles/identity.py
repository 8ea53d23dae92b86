"""Identity resolution: which customer a touch-point event belongs to, from the identifiers it
carries, and which profiles it proves to be one customer.

Identifiers are normalised before anything is compared (``IdentityRules.normalise``): e-mail
addresses lower-cased with spaces removed, phone numbers to E.164 (ITU-T E.164, with the
``phonenumbers`` library and the configured default region for national numbers), other ids
trimmed. Values that are never identifiers (empty, ``null``, ``undefined``, ``n/a``, all
zeros, ...) are ignored, not matched: a form that sends ``phone: "0000"`` for everyone must not
make everyone one customer.

Each identifier kind says how far it may be trusted (``IdentifierKind``):

    merges  two profiles sharing a value are one customer (e-mail, phone, CRM id). A kind that
            does not merge (a device id, a cookie: shared by a family, a library computer)
            is kept on the profile and finds a customer it alone points at, but never joins
            two profiles by itself.
    unique  a customer has at most one value of it (a CRM id, a loyalty number): two profiles
            that each carry a different value are never merged, whatever else they share.

Resolution is deterministic (``resolve``): the same events in any order end in the same
customers. The survivor of a merge is the oldest profile (first seen; ties by id), so its id is
stable; an absorbed id keeps resolving to it through any chain of merges; a pair an admin
unmerged is remembered and not merged again by the identifiers that joined it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import phonenumbers

from nba.errors import FailedPrecondition, InvalidArgument
from nba.inputs import check_id
from nba.policy.profile import DEFAULT_KINDS, IdentifierKind

__all__ = [
    "Candidate",
    "IdentityRules",
    "Resolution",
    "resolve",
]

#: values that stand for "no value" in the systems that send events
NULL_LIKE = frozenset(
    {
        "",
        "null",
        "none",
        "nil",
        "undefined",
        "nan",
        "n/a",
        "na",
        "-",
        "--",
        "unknown",
        "?",
        "(null)",
        "<null>",
        "#n/a",
        '""',
        "''",
    }
)
#: a deliberately loose e-mail shape (RFC 5322 allows far more; systems send far less)
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


@dataclass(frozen=True)
class IdentityRules:
    """The identifier kinds a deployment accepts, and the region national phone numbers are in
    (an ISO 3166-1 alpha-2 code: "GB", "US", "DE")."""

    kinds: Mapping[str, IdentifierKind] = field(default_factory=lambda: {k.name: k for k in DEFAULT_KINDS})
    default_region: str = "GB"

    def normalise(self, kind: str, value: str, field_name: str | None = None) -> str | None:
        """The normalised value, or None when ``value`` is no identifier (empty, null-like,
        all zeros). Raises ``InvalidArgument`` naming ``field_name`` (``identities.KIND`` by
        default) for an unknown kind or a value that cannot be one of its kind.

        >>> rules = IdentityRules()
        >>> rules.normalise("email", "  Ada.Lovelace@Example.COM ")
        'ada.lovelace@example.com'
        >>> rules.normalise("phone", "020 7946 0018")
        '+442079460018'
        >>> rules.normalise("phone", "000-0000") is None
        True
        """
        where = field_name or f"identities.{kind}"
        spec = self.kinds.get(kind)
        if spec is None:
            known = ", ".join(sorted(self.kinds))
            raise InvalidArgument(f"{where}: unknown identifier kind '{kind}'; declared kinds: {known}", field=where)
        text = value.strip()
        if text.lower() in NULL_LIKE or (text and set(re.sub(r"[\s+\-().]", "", text)) <= {"0"}):
            return None
        check_id(where, text)
        if spec.format == "email":
            address = re.sub(r"\s+", "", text).lower()
            if not EMAIL.fullmatch(address):
                raise InvalidArgument(f"{where}: '{text}' is not an e-mail address (name@domain)", field=where)
            return address
        if spec.format == "phone":
            try:
                number = phonenumbers.parse(text, self.default_region)
            except phonenumbers.NumberParseException as exc:
                raise InvalidArgument(f"{where}: '{text}' is not a phone number ({exc._msg})", field=where) from None
            if not phonenumbers.is_possible_number(number):
                raise InvalidArgument(
                    f"{where}: '{text}' is not a possible phone number (national numbers are read as "
                    f"{self.default_region}'s; write others with their country code, +CC)",
                    field=where,
                )
            if not number.national_number:  # +44 0000 000000: a placeholder, not a number
                return None
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return text

    def normalise_all(self, identities: Mapping[str, str], field_name: str = "identities") -> dict[str, str]:
        """Every identifier normalised, those that are no identifier left out."""
        out: dict[str, str] = {}
        for kind, value in identities.items():
            normalised = self.normalise(kind, value, f"{field_name}.{kind}")
            if normalised is not None:
                out[kind] = normalised
        return out

    def merging(self, kind: str) -> bool:
        spec = self.kinds.get(kind)
        return spec is not None and spec.merges

    def unique(self, kind: str) -> bool:
        spec = self.kinds.get(kind)
        return spec is not None and spec.unique


@dataclass(frozen=True)
class Candidate:
    """A known customer an event's identifiers point at."""

    customer_id: str
    #: when the profile was first seen (epoch seconds): the oldest survives a merge
    created_at: float
    #: its values of unique kinds
    unique_values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    """What an event's identifiers resolve to."""

    #: the customer the event belongs to: a known one (the survivor of any merge), or a new one
    customer_id: str
    #: whether ``customer_id`` is a new customer
    new: bool = False
    #: customers this event proves to be ``customer_id``: absorbed into it
    merged: tuple[str, ...] = ()
    #: customers the identifiers point at that may not be merged (a different value of a unique
    #: kind, or unmerged before): left apart, and the identifiers attached to ``customer_id``
    #: only where they do not contradict it
    apart: tuple[str, ...] = ()
    #: the event's identifiers that are kept on ``customer_id`` (a unique kind's value that
    #: belongs to another customer it may not merge with is left out)
    identities: Mapping[str, str] = field(default_factory=dict)


def resolve(
    rules: IdentityRules,
    customer_id: str | None,
    identities: Mapping[str, str],
    owners: Callable[[str, str], Iterable[Candidate]],
    known: Callable[[str], Candidate | None],
    separated: Callable[[str, str], bool],
    new_id: Callable[[], str],
) -> Resolution:
    """Resolves an event that names ``customer_id`` (already followed through merges; None
    when the event carries identifiers only) and normalised ``identities``.

    ``owners(kind, value)`` gives the customers holding a value (survivors only); ``known(id)``
    a customer by id, None when unknown; ``separated(a, b)`` whether an admin unmerged the two;
    ``new_id()`` the id of a new customer. Raises ``FailedPrecondition`` when the event carries
    only identifiers that do not merge and they point at several customers: the list is
    given, not a guess.

    The rules, in order: the event's ``customer_id`` is its customer (a new one when unknown);
    without one, the owner of a unique kind's value, else the oldest owner of a merging value,
    else the single owner of a non-merging value, else a new customer. Then every other owner
    of a merging value joins it unless a unique kind holds different values on the two sides
    or the pair was unmerged; the oldest of those that join survives."""
    found: dict[str, Candidate] = {}
    by_kind: dict[str, list[Candidate]] = {}
    for kind in sorted(identities):
        holders = sorted(owners(kind, identities[kind]), key=lambda c: (c.created_at, c.customer_id))
        by_kind[kind] = holders
        if rules.merging(kind):
            for c in holders:
                found.setdefault(c.customer_id, c)

    primary: Candidate | None = None
    new = False
    if customer_id:
        primary = known(customer_id)
        if primary is None:
            primary, new = Candidate(customer_id, float("inf"), {}), True
    else:
        # a unique kind that does not merge may be held by several customers: it is no proof
        # of who this is, so it is read with the other non-merging kinds below (several: the list)
        unique_owners = [c for kind in sorted(by_kind) if rules.unique(kind) and rules.merging(kind) for c in by_kind[kind]]
        merging_owners = sorted(found.values(), key=lambda c: (c.created_at, c.customer_id))
        if unique_owners:
            primary = unique_owners[0]
        elif merging_owners:
            primary = merging_owners[0]
        else:
            loose = {c.customer_id: c for kind in sorted(by_kind) if not rules.merging(kind) for c in by_kind[kind]}
            if len(loose) > 1:
                kinds = ", ".join(f"identities.{k}" for k in sorted(by_kind) if not rules.merging(k) and by_kind[k])
                raise FailedPrecondition(
                    f"{kinds}: shared by {len(loose)} customers ({', '.join(sorted(loose))}) and not one that merges: "
                    "send customer_id or an identifier that names one customer"
                )
            if loose:
                primary = next(iter(loose.values()))
            else:
                primary, new = Candidate(new_id(), float("inf"), {}), True

    # The group's unique values: the primary's, and the event's own where the primary has none.
    values = dict(primary.unique_values)
    kept: dict[str, str] = {}
    for kind in sorted(identities):
        value = identities[kind]
        if rules.unique(kind) and values.get(kind, value) != value:
            continue  # the customer already has another value of a unique kind: not this one
        if rules.unique(kind):
            values[kind] = value
        kept[kind] = value

    group = [primary]
    apart: list[str] = []
    for c in sorted(found.values(), key=lambda c: (c.created_at, c.customer_id)):
        if c.customer_id == primary.customer_id:
            continue
        clash = any(k in values and values[k] != v for k, v in c.unique_values.items())
        if clash or any(separated(c.customer_id, g.customer_id) for g in group):
            apart.append(c.customer_id)
            continue
        group.append(c)
        for k, v in c.unique_values.items():
            values.setdefault(k, v)
    for c in found.values():  # a unique value a customer kept apart holds stays theirs alone
        if c.customer_id in apart:
            for k, v in c.unique_values.items():
                if kept.get(k) == v:
                    del kept[k]
    survivor = min(group, key=lambda c: (c.created_at, c.customer_id))
    merged = tuple(c.customer_id for c in group if c.customer_id != survivor.customer_id)
    return Resolution(
        customer_id=survivor.customer_id,
        new=new and survivor is primary and not merged,
        merged=merged,
        apart=tuple(apart),
        identities=kept,
    )
