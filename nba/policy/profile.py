"""The ``profile:`` section of a policy set: what a customer profile accepts, keeps and computes
(declared, validated and versioned with the set; ``nba.profiles`` keeps profiles by it).

::

    profile:
      identity:
        default_region: GB                 # national phone numbers are read as this region's
        kinds:                             # beyond email, phone, crm_id, loyalty_id, device_id, cookie_id
          member_no: {merges: true, unique: true}
      event_types:
        order: {properties: {amount: number, status: string, order_id: string}}
        contact: {properties: {sentiment: string, reason: string}}
      attributes:                          # kept from events: the latest (or first) value
        email: {from: signup.email, pii: true}
        tier: {from: order.tier, keep: latest}
      computed:                            # FUNCTION(EVENT[.PROPERTY]) [over WINDOW] [where CEL]
        spend_365d: sum(order.amount) over 365d
        last_mood: last(contact.sentiment)
      activity:                            # current activity: items open until a closing status
        open_orders: {events: [order, delivery], key: order_id, status: status, closed: [delivered, cancelled]}
      relationships:                       # customers an event links, kept on both profiles
        household: {from: household_link.member_id}
      segments:                            # CEL over profile, kept as the profile changes
        frustrated: {when: profile.complaints_30d >= 2, description: Complained twice in 30 days, owner: care}

Computed attributes are read by ``parse``; their functions and windows are documented in
``nba.profiles.computed``, which keeps them up to date. Segments are kept by
``nba.profiles.segments``; rules read the ones a customer is in as ``profile.segments``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from nba.errors import InvalidArgument, Problem
from nba.policy.policies import parse_window
from nba.policy.rules import Rule, RuleSyntaxError

__all__ = [
    "DEFAULT_KINDS",
    "FUNCTIONS",
    "ComputedAttribute",
    "IdentifierKind",
    "ProfileDefinition",
    "ProfileSection",
    "RESERVED",
    "Segment",
    "compile_profile",
    "parse",
]

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
PropertyType = Literal["number", "string", "bool"]


@dataclass(frozen=True)
class IdentifierKind:
    """How one kind of identifier is normalised and trusted (``nba.profiles.identity``)."""

    name: str
    #: two profiles sharing a value of this kind are one customer
    merges: bool = True
    #: a customer has at most one value of this kind
    unique: bool = False
    #: how values are normalised: "email", "phone" or "id" (trimmed, case kept)
    format: str = "id"


#: the kinds known without configuration
DEFAULT_KINDS: tuple[IdentifierKind, ...] = (
    IdentifierKind("email", format="email"),
    IdentifierKind("phone", format="phone"),
    IdentifierKind("crm_id", unique=True),
    IdentifierKind("loyalty_id", unique=True),
    IdentifierKind("device_id", merges=False),
    IdentifierKind("cookie_id", merges=False),
)

#: the functions of computed attributes, and whether each reads a property
FUNCTIONS: dict[str, bool] = {
    "count": False,
    "sum": True,
    "avg": True,
    "min": True,
    "max": True,
    "distinct": True,
    "distinct_count": True,
    "first": True,
    "last": True,
    "days_since": False,
}
NUMERIC = frozenset({"sum", "avg", "min", "max"})
#: names of the profile that are not attributes: rules read the customer's segments and scores there
RESERVED = frozenset({"segments", "scores"})
#: ``profile.NAME`` or ``profile["NAME"]`` in a condition
_PROFILE_FIELD = re.compile(r"\bprofile\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*[\"']([^\"']*)[\"']\s*\])")
_DEFINITION = re.compile(
    r"\s*(?P<function>[a-z_]+)\s*\(\s*(?P<event>\*|[a-z][a-z0-9_]*)(?:\.(?P<property>[A-Za-z_][\w.]*))?\s*\)"
    r"(?:\s+over\s+(?P<window>\S+))?(?:\s+where\s+(?P<where>.+?))?\s*"
)


@dataclass(frozen=True)
class ComputedAttribute:
    """One computed attribute's definition (``parse`` reads it from its line)."""

    name: str
    function: str
    #: the event type it reads, or "*" for all
    event: str
    #: a dotted path in the properties, "source", "type", or None (count, days_since)
    property: str | None
    #: the window in seconds; None: all time
    window: float | None
    #: the filter, compiled over ``event`` (type, source, properties)
    where: Rule | None = None
    source: str = ""


def parse(name: str, line: str) -> ComputedAttribute:
    """Reads ``FUNCTION(EVENT[.PROPERTY]) [over WINDOW] [where CEL]``. Raises
    ``InvalidArgument`` naming the attribute (``profile.computed.NAME``) and what to write.

    >>> a = parse("spend_365d", "sum(order.amount) over 365d")
    >>> (a.function, a.event, a.property, a.window)
    ('sum', 'order', 'amount', 31536000.0)
    """
    where_field = f"profile.computed.{name}"

    def refuse(message: str) -> InvalidArgument:
        return InvalidArgument(f"{where_field}: {message}", field=where_field)

    found = _DEFINITION.fullmatch(line)
    if found is None:
        raise refuse(
            f"'{line}' is not FUNCTION(EVENT[.PROPERTY]) [over WINDOW] [where CONDITION], such as sum(order.amount) over 365d"
        )
    function, event, prop = found["function"], found["event"], found["property"]
    if function not in FUNCTIONS:
        raise refuse(f"unknown function '{function}'; one of {', '.join(FUNCTIONS)}")
    if FUNCTIONS[function] and prop is None:
        raise refuse(f"{function} needs a property: {function}({event}.PROPERTY)")
    if not FUNCTIONS[function] and prop is not None:
        raise refuse(f"{function} counts events, not a property: {function}({event})")
    window = None
    if found["window"] is not None:
        if function == "days_since":
            raise refuse(f"days_since is over all time; drop 'over {found['window']}'")
        try:
            window = float(parse_window(found["window"]))
        except ValueError as exc:
            raise refuse(f"over: {exc}") from None
        if window <= 0:
            raise refuse("over: a window must be longer than 0")
    where = None
    if found["where"] is not None:
        try:
            where = Rule(found["where"], ("event",))
        except RuleSyntaxError as exc:
            raise refuse(f"where: {exc}") from None
    return ComputedAttribute(name, function, event, prop, window, where, line.strip())


class KindSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merges: bool = True
    unique: bool = False
    format: Literal["email", "phone", "id"] = "id"


class IdentitySection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default_region: str = Field("GB", description="ISO 3166-1 alpha-2 region of national phone numbers")
    kinds: dict[Name, KindSpec] = Field(default_factory=dict, description="identifier kinds beyond the defaults")


class EventType(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    properties: dict[Name, PropertyType] = Field(default_factory=dict)
    dedupe_by: Name | None = Field(
        None,
        description="a property naming the thing the event is about (an order id): a later event of this type with "
        "the same value, under any event_id, from any touch point, is a near-duplicate, counted once",
    )


class AttributeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(alias="from", description="EVENT.PROPERTY the value is taken from")
    keep: Literal["latest", "first"] = "latest"
    #: personal data: never learned from, masked in logs and exports
    pii: bool = False
    consent: bool = Field(
        False,
        description="the customer's own choice (marketing consent): the recorded value wins over a request's "
        "context.profile.NAME, so no channel can grant what the customer withdrew",
    )


class ActivitySpec(BaseModel):
    """Current activity: things a customer has under way (orders, deliveries, complaints,
    returns), each named by a key property of its events, open until an event gives it a
    closing status."""

    model_config = ConfigDict(extra="forbid")
    events: list[Name] = Field(min_length=1, description="event types that open or update an item")
    key: str = Field(description="the property naming the item (an order id, a case number)")
    status: str = Field("status", description="the property holding the item's status; the newest event's wins")
    closed: list[str] = Field(min_length=1, description="statuses that close an item (any other keeps it open)")


class RelationshipSpec(BaseModel):
    """Customers linked by an event: its customer and the one a property names (by customer id)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(alias="from", description="EVENT.PROPERTY holding the other customer's id")


class SegmentSpec(BaseModel):
    """A segment: the customers whose profile meets a condition, kept as profiles change."""

    model_config = ConfigDict(extra="forbid")
    when: str = Field(description="a CEL condition over profile (attributes, computed attributes, activity counts)")
    description: str = Field("", description="what the segment is for, as marketers read it")
    owner: str = Field("", description="who answers for it (a team or a person)")


class ScoreSpec(BaseModel):
    """A predictive score: the chance that an event happens within a horizon, learned online."""

    model_config = ConfigDict(extra="forbid")
    predicts: str = Field(description="the event type it predicts (account_closed)")
    within: str = Field(description="the horizon: the event counts when it happens this long after the prediction (90d)")
    where: str | None = Field(None, description="which of those events count: CEL over event (or properties, source)")
    min_auc: float = Field(0.6, ge=0.5, le=1.0, description="below this progressive ROC AUC the score is flagged")
    description: str = ""
    owner: str = ""


_SCORE_LINE = re.compile(r"\s*predicts\s+(?P<event>[a-z][a-z0-9_]*)(?:\s+where\s+(?P<where>.+?))?\s+within\s+(?P<within>\S+)\s*")


class ProfileSection(BaseModel):
    """The ``profile:`` section of a policy file."""

    model_config = ConfigDict(extra="forbid")
    identity: IdentitySection = Field(default_factory=lambda: IdentitySection(default_region="GB"))
    event_types: dict[Name, EventType] = Field(default_factory=dict)
    attributes: dict[Name, AttributeSpec] = Field(default_factory=dict)
    computed: dict[Name, str] = Field(default_factory=dict)
    activity: dict[Name, ActivitySpec] = Field(default_factory=dict)
    relationships: dict[Name, RelationshipSpec] = Field(default_factory=dict)
    segments: dict[Name, SegmentSpec] = Field(default_factory=dict)
    scores: dict[Name, ScoreSpec | str] = Field(
        default_factory=dict,
        description="predictive scores: 'predicts EVENT [where CONDITION] within WINDOW', or the same as fields",
    )


@dataclass(frozen=True)
class Score:
    """One predictive score, compiled (``nba.profiles.scores`` learns it)."""

    name: str
    #: the event type it predicts
    event: str
    #: the horizon, seconds
    horizon: float
    where: Rule | None = None
    min_auc: float = 0.6
    description: str = ""
    owner: str = ""

    @property
    def source(self) -> str:
        """What the model is learned for: a model learned under another is started afresh."""
        where = f" where {self.where.source}" if self.where is not None else ""
        return f"predicts {self.event}{where} within {self.horizon:g}s"


@dataclass(frozen=True)
class Segment:
    """One segment, compiled: ``rule`` over ``profile``."""

    name: str
    rule: Rule
    description: str = ""
    owner: str = ""
    #: the profile names the condition reads
    reads: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Activity:
    """One kind of current activity, compiled: rules read ``profile.NAME`` as the number of
    open items."""

    name: str
    events: frozenset[str]
    key: str
    status: str
    closed: frozenset[str]

    @cached_property
    def source(self) -> str:
        """What a stored state was built under: a state built under another is rebuilt."""
        return f"{sorted(self.events)} key={self.key} status={self.status} closed={sorted(self.closed)}"


@dataclass(frozen=True)
class ProfileDefinition:
    """The profile section, checked and compiled."""

    kinds: Mapping[str, IdentifierKind] = field(default_factory=lambda: {k.name: k for k in DEFAULT_KINDS})
    default_region: str = "GB"
    event_types: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: attribute -> (event type, property, keep, pii)
    attributes: Mapping[str, tuple[str, str, str, bool]] = field(default_factory=dict)
    computed: tuple[ComputedAttribute, ...] = ()
    #: attributes and computed attributes that carry personal data (a computed one reading a
    #: property a pii attribute is kept from): never learned from, masked in logs and exports
    pii: frozenset[str] = frozenset()
    activities: tuple[Activity, ...] = ()
    #: relationship kind -> (event type, property naming the other customer)
    relationships: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    segments: tuple[Segment, ...] = ()
    #: event type -> the property whose value makes two events of it one (``dedupe_by``)
    dedupe: Mapping[str, str] = field(default_factory=dict)
    scores: tuple[Score, ...] = ()
    #: attributes holding the customer's consent: the stored value wins over the request's
    consent: frozenset[str] = frozenset()

    @cached_property
    def fingerprint(self) -> str:
        """What a profile's state is built under (attributes, computed attributes, activities,
        segments), 16 hex digits: a profile stored under another is rebuilt from its events
        (or, when only segments changed, its segments evaluated again)."""
        parts = [f"a {name} {spec}" for name, spec in sorted(self.attributes.items())]
        parts += [f"c {c.name} {c.source}" for c in self.computed]
        parts += [f"x {a.name} {a.source}" for a in self.activities]
        parts += [f"s {name} {when}" for name, when in self.segment_sources.items()]
        return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:16]

    @cached_property
    def segment_sources(self) -> Mapping[str, str]:
        """Each segment's condition, by name: a stored membership kept under another is evaluated again."""
        return {s.name: s.rule.source for s in self.segments}

    @cached_property
    def attribute_sources(self) -> Mapping[str, str]:
        """What each kept attribute's stored value is kept under (``EVENT.PROPERTY KEEP``)."""
        return {name: f"{event}.{prop} {keep}" for name, (event, prop, keep, _) in self.attributes.items()}

    @property
    def names(self) -> frozenset[str]:
        """Every attribute, computed attribute and activity, and ``segments`` once any is
        declared: what rules may read as ``profile.NAME``."""
        names = frozenset(self.attributes) | frozenset(c.name for c in self.computed) | frozenset(a.name for a in self.activities)
        if self.segments:
            names |= {"segments"}
        if self.scores:
            names |= {"scores"}
        return names


def compile_profile(section: ProfileSection | None, file: str = "") -> tuple[ProfileDefinition, list[Problem]]:
    """The definition and every problem found (each naming ``file`` and the field)."""
    if section is None:
        return ProfileDefinition(), []
    problems: list[Problem] = []

    def problem(where: str, message: str) -> None:
        problems.append(Problem(message, file=file, field=f"profile.{where}"))

    # imported here, not with the module: validation runs in a child process under a memory
    # limit (nba.policy.sandbox), and a set without a profile section must not pay for the
    # phone number library's tables there
    import phonenumbers

    region = section.identity.default_region.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        problem("identity.default_region", f"'{section.identity.default_region}' is not a region code (GB, US, DE, ...)")
    kinds = {k.name: k for k in DEFAULT_KINDS}
    for name, kind_spec in section.identity.kinds.items():
        kinds[name] = IdentifierKind(name, kind_spec.merges, kind_spec.unique, kind_spec.format)
    types = {name: dict(t.properties) for name, t in section.event_types.items()}
    dedupe: dict[str, str] = {}
    for name, event_type in section.event_types.items():
        if event_type.dedupe_by is None:
            continue
        key_kind = event_type.properties.get(event_type.dedupe_by)
        if key_kind not in ("string", "number"):
            declared = ", ".join(f"{p} ({k})" for p, k in event_type.properties.items() if k != "bool") or "none"
            problem(
                f"event_types.{name}.dedupe_by",
                f"'{event_type.dedupe_by}' is not a declared string or number property of '{name}' ({declared})",
            )
            continue
        dedupe[name] = event_type.dedupe_by

    def known(event: str, prop: str | None, where: str) -> str | None:
        """The property's declared type, "string" for source/type; None (and a problem) when unknown."""
        if event != "*" and event not in types:
            declared = ", ".join(sorted(types)) or "none declared"
            problem(where, f"unknown event type '{event}' (event_types: {declared})")
            return None
        if prop is None or prop in ("source", "type"):
            return "string"
        head = prop.split(".")[0]
        found = {types[t].get(head) for t in (types if event == "*" else [event])} - {None}
        if not found:
            problem(where, f"'{prop}' is not a property of {'any event type' if event == '*' else event}")
            return None
        return found.pop() if len(found) == 1 else "string"

    attributes: dict[str, tuple[str, str, str, bool]] = {}
    for name, spec in section.attributes.items():
        event, _, prop = spec.source.partition(".")
        if not prop:
            problem(f"attributes.{name}.from", f"'{spec.source}' is not EVENT.PROPERTY")
            continue
        if event == "*":
            problem(f"attributes.{name}.from", f"'{spec.source}': an attribute is kept from one event type, not *")
            continue
        if spec.consent and spec.pii:
            problem(f"attributes.{name}.consent", "a consent attribute is read by rules and logged: it cannot be pii too")
            continue
        if known(event, prop, f"attributes.{name}.from") is not None:
            attributes[name] = (event, prop, spec.keep, spec.pii)
    computed: list[ComputedAttribute] = []
    for name, line in section.computed.items():
        if name in attributes:
            problem(f"computed.{name}", f"'{name}' is also an attribute: one name, one meaning")
            continue
        try:
            attribute = parse(name, line)
        except InvalidArgument as exc:
            problem(f"computed.{name}", str(exc).split(": ", 1)[1])
            continue
        kind = known(attribute.event, attribute.property, f"computed.{name}")
        if kind is None:
            continue
        if attribute.function in NUMERIC and kind != "number":
            problem(f"computed.{name}", f"{attribute.function} needs a number, and '{attribute.property}' is a {kind}")
            continue
        computed.append(attribute)
    personal = {(event, prop) for event, prop, _, pii in attributes.values() if pii}
    pii = {name for name, (_, _, _, flag) in attributes.items() if flag}
    pii.update(
        c.name
        for c in computed
        if c.property is not None
        and ((c.event, c.property) in personal or (c.event == "*" and any(c.property == p for _, p in personal)))
    )
    activities: list[Activity] = []
    for name, activity_spec in section.activity.items():
        if name in attributes or name in section.computed:
            problem(f"activity.{name}", f"'{name}' is also an attribute or a computed attribute: one name, one meaning")
            continue
        fine = True
        for event in activity_spec.events:
            for prop, field_name in ((activity_spec.key, "key"), (activity_spec.status, "status")):
                if known(event, prop, f"activity.{name}.{field_name}") is None:
                    fine = False
        if fine:
            activities.append(
                Activity(
                    name,
                    frozenset(activity_spec.events),
                    activity_spec.key,
                    activity_spec.status,
                    frozenset(activity_spec.closed),
                )
            )
    relationships: dict[str, tuple[str, str]] = {}
    for name, link in section.relationships.items():
        event, _, prop = link.source.partition(".")
        if not prop or event == "*":
            problem(f"relationships.{name}.from", f"'{link.source}' is not EVENT.PROPERTY (one event type)")
            continue
        if known(event, prop, f"relationships.{name}.from") is not None:
            relationships[name] = (event, prop)
    for where, names in (("attributes", section.attributes), ("computed", section.computed), ("activity", section.activity)):
        for name in sorted(RESERVED & set(names)):
            problem(f"{where}.{name}", f"'{name}' is reserved: rules read the customer's {name} as profile.{name}")
    readable = (set(attributes) | {c.name for c in computed} | {a.name for a in activities}) - RESERVED
    segments: list[Segment] = []
    for name, segment_spec in section.segments.items():
        where = f"segments.{name}.when"
        try:
            rule = Rule(segment_spec.when, ("profile",))
        except RuleSyntaxError as exc:
            problem(where, str(exc))
            continue
        reads = {m[0] or m[1] for m in _PROFILE_FIELD.findall(segment_spec.when)}
        inner = sorted(reads & RESERVED)
        if inner:
            problem(where, f"a segment reads the profile, not profile.{inner[0]}: write the condition out in full")
            continue
        unknown = sorted(reads - readable)
        if unknown:
            known_names = ", ".join(sorted(readable)) or "none declared"
            problem(where, f"profile.{unknown[0]} is not an attribute, computed attribute or activity ({known_names})")
            continue
        # a condition that passes the whole profile on (size(profile)) may read any of it
        if re.search(r"\bprofile\b(?!\s*[.\[])", segment_spec.when):
            reads = set(readable)
        personal_reads = sorted(reads & pii)
        if personal_reads:
            problem(
                where,
                f"profile.{personal_reads[0]} is personal data (pii): segments are learned from and logged, so they may not "
                "read it; read it in an offer's rule instead",
            )
            continue
        segments.append(Segment(name, rule, segment_spec.description, segment_spec.owner, frozenset(reads)))
    scores: list[Score] = []
    for name, score_spec in section.scores.items():
        where = f"scores.{name}"
        if isinstance(score_spec, str):
            found = _SCORE_LINE.fullmatch(score_spec)
            if found is None:
                problem(
                    where,
                    f"'{score_spec}' is not 'predicts EVENT [where CONDITION] within WINDOW' (predicts account_closed within 90d)",
                )
                continue
            score_spec = ScoreSpec(predicts=found["event"], within=found["within"], where=found["where"], min_auc=0.6)
        if types and score_spec.predicts not in types:
            problem(f"{where}.predicts", f"unknown event type '{score_spec.predicts}' (event_types: {', '.join(sorted(types))})")
            continue
        try:
            horizon = float(parse_window(score_spec.within))
        except ValueError as exc:
            problem(f"{where}.within", str(exc))
            continue
        if horizon <= 0:
            problem(f"{where}.within", "a horizon must be longer than 0")
            continue
        condition = None
        if score_spec.where is not None:
            try:
                condition = Rule(score_spec.where, ("event", "properties", "source", "type"))
            except RuleSyntaxError as exc:
                problem(f"{where}.where", str(exc))
                continue
        scores.append(
            Score(name, score_spec.predicts, horizon, condition, score_spec.min_auc, score_spec.description, score_spec.owner)
        )
    definition = ProfileDefinition(
        kinds,
        region,
        types,
        attributes,
        tuple(computed),
        frozenset(pii),
        tuple(activities),
        relationships,
        tuple(segments),
        dedupe,
        tuple(scores),
        consent=frozenset(name for name, spec in section.attributes.items() if spec.consent and name in attributes),
    )
    return definition, problems
