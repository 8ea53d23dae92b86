"""One customer's profile: the attributes kept from their events and the computed attributes
maintained on each, as the policy set's ``profile:`` section defines them.

``check`` says whether an event is one the profile accepts (a declared type, properties of the
declared types); ``Profile.apply`` takes an accepted event into the profile; ``Profile.view``
is what rules and the learner will see at a moment (personal data left out for the learner);
``dump`` and ``load`` round-trip a profile through JSON, which is how it is stored. A merge of
two customers is the survivor applying the absorbed profile's events: every aggregate is
placed by event time, so the result does not depend on which profile saw which event first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nba.errors import InvalidArgument
from nba.inputs import MAX_CONTEXT_NUMBER, finite_number, value_kind
from nba.policy.profile import Activity, ProfileDefinition
from nba.profiles.computed import State, contribution, matches
from nba.profiles.scores import Example, Prediction, features, is_target
from nba.profiles.segments import HORIZON, SegmentChange, first_change, members, time_dependent

__all__ = ["NotInDefinition", "Profile", "TrackedEvent", "check"]

#: closed items of current activity kept per activity (the newest): what a late event of one finds
CLOSED_KEPT = 20

_TYPES: dict[str, tuple[type, ...]] = {"number": (int, float), "string": (str,), "bool": (bool,)}


@dataclass(frozen=True)
class TrackedEvent:
    """A touch-point event, resolved to its customer."""

    event_id: str
    customer_id: str
    type: str
    #: the touch point: web, app, store, call_center, e-mail, social, ...
    source: str
    #: when it happened, epoch seconds
    occurred_at: float
    properties: Mapping[str, Any] = field(default_factory=dict)

    def as_mapping(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, "properties": dict(self.properties)}


class NotInDefinition(InvalidArgument):
    """An event the profile definition does not accept (its type, or a declared property's
    type): well formed, so it is kept as a dead letter until a fixed definition applies it."""


def check(definition: ProfileDefinition, event_type: str, properties: Mapping[str, Any]) -> None:
    """Raises ``InvalidArgument`` naming the field for a value that cannot be stored as sent,
    and ``NotInDefinition`` when the profile does not accept the event: a type that is not
    declared (once any is), or a declared property of another type. Other properties are kept
    as they come.

    >>> from nba.policy.profile import Activity, ProfileDefinition
    >>> check(ProfileDefinition(event_types={"order": {"amount": "number"}}), "order", {"amount": "ten"})
    Traceback (most recent call last):
    ...
    nba.profiles.profile.NotInDefinition: properties.amount: must be a number for 'order' events, got a text
    """
    _finite(properties, "properties")
    types = definition.event_types
    if not types:
        return
    declared = types.get(event_type)
    if declared is None:
        raise NotInDefinition(
            f"type: '{event_type}' is not an event type of the profile ({', '.join(sorted(types))})", field="type"
        )
    for name, kind in declared.items():
        value = properties.get(name)
        if value is None:
            continue
        wanted = _TYPES[kind]
        if isinstance(value, bool) and kind != "bool" or not isinstance(value, wanted):
            raise NotInDefinition(  # (the kind of value, not the value: it may be personal data)
                f"properties.{name}: must be a {kind} for '{event_type}' events, got {value_kind(value)}",
                field=f"properties.{name}",
            )


def _finite(value: Any, path: str) -> None:
    """Raises ``InvalidArgument`` at the first value, in any property (declared or not), that
    could not be stored and read back as sent: a number that is not finite or beyond 2**53 in
    magnitude (NaN has no JSON; a larger integer comes back a float; sums of such numbers leave
    the doubles), or a text or key holding a lone UTF-16 surrogate (no UTF-8 encodes it; only a
    file can send one). Numbers past 2**53 are identifiers: send them as text."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        if not finite_number(value) or abs(value) > MAX_CONTEXT_NUMBER:
            raise InvalidArgument(
                f"{path}: must be a finite number of magnitude at most 2**53 (a larger id: send it as text), got {value!r}"[:300],
                field=path,
            )
    elif isinstance(value, str):
        _text(value, path)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _text(str(key), f"{path}.{key}")
            _finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            _finite(item, f"{path}[{n}]")


def _text(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{path}: holds a lone surrogate at position {exc.start}; send valid UTF-8 text", field=path
        ) from None


class Profile:
    """A customer's kept and computed attributes. ``version`` counts the events applied."""

    def __init__(self, definition: ProfileDefinition, customer_id: str, created_at: float, *, empty: bool = True) -> None:
        self.definition = definition
        self.customer_id = customer_id
        self.created_at = created_at
        self.version = 0
        #: attribute -> (value, time, event id) of the event it was kept from
        self.attributes: dict[str, tuple[Any, float, str]] = {}
        # (``load`` fills the states it has, and only then makes the missing ones)
        self.computed: dict[str, State] = {c.name: State(c) for c in definition.computed} if empty else {}
        #: activity -> item key -> the item (``_item``): open ones, and the latest closed ones
        self.activity: dict[str, dict[str, dict[str, Any]]] = {a.name: {} for a in definition.activities}
        #: attributes, computed attributes and activities ``load`` found stored under another
        #: definition (or not at all) in a profile with events: empty until ``rebuild``
        self.stale: frozenset[str] = frozenset()
        #: segment -> when the customer entered it (epoch seconds), as of ``segments_at``
        self.segments: dict[str, float] = {}
        #: when the segments were last evaluated (None: never)
        self.segments_at: float | None = None
        #: the next time-driven change of a segment after ``segments_at`` (``plan``); None when
        #: none can come without an event
        self.segments_due: float | None = None
        #: whether ``segments_due`` holds for the profile as it is (an event applied since: no)
        self._due_known = True
        #: segments stored under another condition (or not at all): evaluated again at the next ``settle``
        self.segments_stale = False
        #: entries and exits not yet recorded (the tracker writes them with the profile)
        self.segment_changes: list[SegmentChange] = []
        #: score -> the open prediction (``nba.profiles.scores``)
        self.predictions: dict[str, Prediction] = {}
        #: the newest event time applied (epoch seconds; None: none, or stored before it was kept)
        self.newest: float | None = None

    def apply(self, event: TrackedEvent) -> None:
        """Takes an (accepted, first-seen) event into the profile (its segments are evaluated
        by ``settle``)."""
        self.version += 1
        self._due_known = False
        self.newest = event.occurred_at if self.newest is None else max(self.newest, event.occurred_at)
        order = (event.occurred_at, event.event_id)
        for name, (event_type, prop, keep, _pii) in self.definition.attributes.items():
            if event_type != event.type:
                continue
            value = _read(event, prop)
            if value is None:
                continue
            held = self.attributes.get(name)
            newer = held is None or (order > (held[1], held[2]) if keep == "latest" else order < (held[1], held[2]))
            if newer:
                self.attributes[name] = (value, event.occurred_at, event.event_id)
        for activity in self.definition.activities:
            if event.type in activity.events:
                self._update(activity, event)
        mapping = event.as_mapping()
        for state in self.computed.values():
            if matches(state.attribute, event.type):
                counts, value = contribution(state.attribute, mapping)
                if counts:
                    state.add(event.occurred_at, event.event_id, value)

    def _update(self, activity: Activity, event: TrackedEvent) -> None:
        """An item of current activity opened or moved on by ``event``. The status is the
        newest status-bearing event's (by time, ties by event id), whatever the arrival order;
        an event without one leaves it as it is (a new item's is "")."""
        key = id_text(_read(event, activity.key))
        if key is None:
            return
        status = _read(event, activity.status)
        status = None if status is None or isinstance(status, Mapping | list) else str(status)
        items = self.activity[activity.name]
        at, event_id = event.occurred_at, event.event_id
        item = items.get(key)
        if item is None:
            item = items[key] = {
                "status": "",
                "status_at": None,
                "status_event": "",
                "since": at,
                "updated_at": at,
                "event": event_id,
                "type": event.type,
            }
        else:
            item["since"] = min(item["since"], at)
            if (at, event_id) > (item["updated_at"], item["event"]):
                item["updated_at"], item["event"], item["type"] = at, event_id, event.type
        if status is not None and (item["status_at"] is None or (at, event_id) > (item["status_at"], item["status_event"])):
            item["status"], item["status_at"], item["status_event"] = status, at, event_id
        closed = [k for k, i in items.items() if i["status"] in activity.closed]
        if len(closed) > CLOSED_KEPT:  # the newest closed ones are kept: a late event of one finds it
            closed.sort(key=lambda k: (items[k]["updated_at"], items[k]["event"]))
            for gone in closed[: len(closed) - CLOSED_KEPT]:
                del items[gone]

    def open_items(self) -> dict[str, int]:
        """Open items of each activity, by activity."""
        return {
            a.name: sum(1 for i in self.activity[a.name].values() if i["status"] not in a.closed)
            for a in self.definition.activities
        }

    def items(self) -> list[tuple[str, str, dict[str, Any], bool]]:
        """Every item kept, as (activity, key, item, open), open ones first, then by the
        newest update."""
        out = [
            (a.name, key, item, item["status"] not in a.closed)
            for a in self.definition.activities
            for key, item in self.activity[a.name].items()
        ]
        out.sort(key=lambda i: (not i[3], -i[2]["updated_at"], i[0], i[1]))
        return out

    def rebuild(self, events: Iterable[TrackedEvent], now: float) -> None:
        """The ``stale`` parts made again from the customer's stored events (all of them, in
        order), and the segments evaluated again at ``now``: a backfill of a changed definition.
        The version does not change: the profile says what it said, under the definition now
        live."""
        stale = self.stale
        if not stale:
            if self.segments_stale:
                self.settle(now)
            return
        fresh = Profile(self.definition, self.customer_id, self.created_at)
        for event in events:
            fresh.apply(event)
        for name in stale:
            if name in fresh.computed:
                self.computed[name] = fresh.computed[name]
            elif name in fresh.activity:
                self.activity[name] = fresh.activity[name]
            elif name in fresh.attributes:
                self.attributes[name] = fresh.attributes[name]
            else:
                self.attributes.pop(name, None)  # an attribute no event sets under its new definition
        self.stale = frozenset()
        self._due_known = False
        self.settle(now)

    def absorb(self, events: Iterable[TrackedEvent]) -> None:
        """A merge: the absorbed customer's events, applied here."""
        for event in events:
            self.apply(event)

    def view(self, now: float, include_pii: bool = True) -> dict[str, Any]:
        """Attribute and computed attribute values at ``now`` (epoch seconds), by name, and
        ``segments`` (the names of those the customer is in, sorted) once any is declared: what
        rules read as ``profile``. Without ``include_pii``, what the learner may learn from."""
        out = self.values(now, include_pii)
        if self.definition.segments:
            out["segments"] = sorted(self.current_segments(now))
        return out

    def values(self, now: float, include_pii: bool = True, names: frozenset[str] | None = None) -> dict[str, Any]:
        """The view without segments: what segment conditions read (only ``names``, when given)."""
        pii = self.definition.pii
        out: dict[str, Any] = {
            name: value
            for name, (value, _, _) in self.attributes.items()
            if (include_pii or name not in pii) and (names is None or name in names)
        }
        out.update(
            (name, state.value(now))
            for name, state in self.computed.items()
            if (include_pii or name not in pii) and (names is None or name in names)
        )
        if self.definition.activities and (names is None or any(a.name in names for a in self.definition.activities)):
            out.update(self.open_items())
        return out

    # Segments (nba.profiles.segments): the tracker calls advance (time-driven changes up to an
    # event), apply, settle (the event's changes), and plan before saving.

    def settle(self, at: float) -> None:
        """Evaluates every segment at ``at`` (after events applied up to it) and records the
        entries and exits there."""
        if not self.definition.segments and not self.segments:
            self.segments_stale = False
            return
        at = max(at, self.segments_at) if self.segments_at is not None else at
        now_in = members(self.definition.segments, self.values(at))
        self._record(now_in, at)
        self.segments_at = at
        self.segments_stale = False
        self._due_known = False

    def advance(self, until: float) -> None:
        """Records the time-driven entries and exits up to ``until`` (epoch seconds)."""
        if self.segments_at is None or until <= self.segments_at or self.segments_stale:
            return
        if not (self._due_known and (self.segments_due is None or until < self.segments_due)):
            while (found := self._first_change(frozenset(self.segments), self.segments_at, until)) is not None:
                at, moving_in = found
                moving = {s.name for s in time_dependent(self.definition)[0]}
                self._record((frozenset(self.segments) - moving) | moving_in, at)
                self.segments_at = at
            self._due_known = False
        self.segments_at = until

    def plan(self, exact: bool = True) -> None:
        """Finds ``segments_due``, the next time-driven change after ``segments_at``; not
        ``exact``: a moment no later than it (a change of a condition over days_since is not
        bisected: the clock, waking then, finds it exactly), what tracking stores, so that an
        event does not pay for dating a change months ahead."""
        if self._due_known:
            return
        self._due_known = True
        if self.segments_at is None or not time_dependent(self.definition)[0]:
            self.segments_due = None
            return
        after = self.segments_at
        found = self._first_change(frozenset(self.segments), after, after + HORIZON, exact)
        self.segments_due = found[0] if found is not None else after + HORIZON

    def current_segments(self, now: float) -> dict[str, float]:
        """The segments the customer is in at ``now``, with when they entered each, without
        recording anything (what a read sees between the segment clock's passes)."""
        held, at = dict(self.segments), self.segments_at
        if at is None or self.segments_stale:
            found = members(self.definition.segments, self.values(now))
            return {name: held.get(name, now) for name in sorted(found)}
        if now <= at or (self._due_known and (self.segments_due is None or now < self.segments_due)):
            return held
        moving = {s.name for s in time_dependent(self.definition)[0]}
        while (found_at := self._first_change(frozenset(held), at, now)) is not None:
            at, moving_in = found_at
            kept = (frozenset(held) - moving) | moving_in
            held = {name: held.get(name, at) for name in sorted(kept)}
        return held

    def _first_change(
        self, current: frozenset[str], after: float, until: float, exact: bool = True
    ) -> tuple[float, frozenset[str]] | None:
        return first_change(
            self.definition,
            lambda t, names: self.values(t, names=names),
            lambda name, start, end: self.computed[name].changes(start, end),
            current,
            after,
            until,
            exact,
        )

    def _record(self, now_in: frozenset[str], at: float) -> None:
        held = self.segments
        for name in sorted(set(held) - now_in):
            del held[name]
            self.segment_changes.append(SegmentChange(name, at, False))
        for name in sorted(now_in - set(held)):
            held[name] = at
            self.segment_changes.append(SegmentChange(name, at, True))

    def carry_segments(self, other: Profile) -> None:
        """Takes ``other``'s recorded membership and open predictions (the same customer's,
        before its profile was made again from its events): the next ``settle`` records only
        what changed."""
        self.segments, self.segments_at = dict(other.segments), other.segments_at
        self.predictions = dict(other.predictions)

    # Scores (nba.profiles.scores): an event may mature an open prediction positive, and opens a
    # new one; the clock matures those whose horizon passed negative.

    def observe(self, event: TrackedEvent, predict: Callable[[str, Mapping[str, float]], float]) -> list[Example]:
        """After ``event`` is applied: the label it matures (a predicted event strictly after an
        open prediction's moment, within its horizon; one dated at or before it answers
        nothing), and, for a score with no open prediction and an event that is not the
        predicted one, a prediction made now. Its moment is the newest event the profile holds
        (by event time, whatever the arrival order), so its features hold nothing from after it."""
        scores = self.definition.scores
        if not scores:
            return []
        matured: list[Example] = []
        x: dict[str, float] | None = None
        moment = self.newest if self.newest is not None else event.occurred_at
        for score in scores:
            held = self.predictions.get(score.name)
            if is_target(score, event.type, event.source, event.properties):
                if held is not None and held.at < event.occurred_at <= held.due:
                    matured.append(Example(score.name, held.x, held.p, True))
                    self.predictions.pop(score.name)  # the next is made at the next event
                continue
            if held is None:  # an open prediction stays open until it matures: no event replaces it
                if x is None:
                    x = features(self.values(moment, include_pii=False))
                self.predictions[score.name] = Prediction(moment, moment + score.horizon, predict(score.name, x), x)
        self._due_known = False
        return matured

    def mature(self, now: float, predict: Callable[[str, Mapping[str, float]], float]) -> list[Example]:
        """The predictions whose horizon passed by ``now`` without the event: negative labels,
        each followed by a prediction made at its horizon's end (at most ``MATURE_AT_ONCE`` a
        score a call: a long-quiet customer catches up over the clock's next passes)."""
        matured: list[Example] = []
        for score in self.definition.scores:
            for _ in range(MATURE_AT_ONCE):
                held = self.predictions.get(score.name)
                if held is None or held.due > now:
                    break
                matured.append(Example(score.name, held.x, held.p, False))
                x = features(self.values(held.due, include_pii=False))
                self.predictions[score.name] = Prediction(held.due, held.due + score.horizon, predict(score.name, x), x)
        if matured:
            self._due_known = False
        return matured

    @property
    def predictions_due(self) -> float | None:
        return min((p.due for p in self.predictions.values()), default=None)

    def dump(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "created_at": self.created_at,
            "version": self.version,
            # a profile with parts not yet rebuilt is not built under the live definition
            "built_under": self.definition.fingerprint if not (self.stale or self.segments_stale) else None,
            "attributes": {name: list(held) for name, held in self.attributes.items()},
            "attribute_definitions": self.definition.attribute_sources,
            "computed": {
                name: {"definition": state.attribute.source, "state": state.dump()} for name, state in self.computed.items()
            },
            "activity": {a.name: {"definition": a.source, "items": self.activity[a.name]} for a in self.definition.activities},
            "segments": self.segments,
            "segments_at": self.segments_at,
            "segment_definitions": self.definition.segment_sources,
            "newest": self.newest,
            "predictions": {
                name: {**p.dump(), "source": _score_source(self.definition, name)} for name, p in self.predictions.items()
            },
            # only once known: a profile saved with it unknown has it found again when read
            **({"segments_due": self.segments_due} if self._due_known else {}),
        }

    @classmethod
    def load(cls, definition: ProfileDefinition, data: Mapping[str, Any]) -> Profile:
        """A stored profile under ``definition``. A computed attribute the stored state lacks, or
        holds under another definition (added or changed since), starts empty: it is to be
        backfilled from the stored events."""
        profile = cls(definition, str(data["customer_id"]), float(data["created_at"]), empty=False)
        profile.version = int(data.get("version", 0))
        stale: set[str] = set()
        # (a profile stored before attribute definitions were recorded: its attributes are
        # rebuilt once, since nothing says what they were kept under)
        kept_under = data.get("attribute_definitions") or {}
        sources = definition.attribute_sources
        if kept_under != sources:
            stale.update(name for name, source in sources.items() if kept_under.get(name) != source)
        for name, (value, at, event_id) in data.get("attributes", {}).items():
            if name in definition.attributes and name not in stale:
                profile.attributes[name] = (value, float(at), str(event_id))
        stored = data.get("computed", {})
        for attribute in definition.computed:
            kept = stored.get(attribute.name)
            if kept is not None and kept.get("definition") == attribute.source:
                profile.computed[attribute.name] = State.load(attribute, kept["state"])
            else:
                profile.computed[attribute.name] = State(attribute)
                stale.add(attribute.name)
        activity = data.get("activity", {})
        for a in definition.activities:
            held = activity.get(a.name)
            if held is not None and held.get("definition") == a.source:
                profile.activity[a.name] = {str(k): dict(v) for k, v in held.get("items", {}).items()}
            else:
                stale.add(a.name)
        profile.stale = frozenset(stale) if profile.version else frozenset()
        profile.segments = {str(k): float(v) for k, v in (data.get("segments") or {}).items()}
        at = data.get("segments_at")
        profile.segments_at = float(at) if at is not None else None
        due = data.get("segments_due")
        profile.segments_due = float(due) if due is not None else None
        profile._due_known = "segments_due" in data or at is None
        kept_segments = data.get("segment_definitions") or {}
        newest = data.get("newest")
        profile.newest = float(newest) if newest is not None else None
        for name, held_prediction in (data.get("predictions") or {}).items():
            # a prediction made for another definition of its score is not one of this score's
            if held_prediction.get("source") == _score_source(definition, name):
                profile.predictions[name] = Prediction.load(held_prediction)
        profile.segments_stale = dict(kept_segments) != dict(definition.segment_sources) or (
            bool(definition.segments) and at is None and profile.version > 0
        )
        return profile


#: predictions of one score a customer matures in one clock pass, at most
MATURE_AT_ONCE = 4


def _score_source(definition: ProfileDefinition, name: str) -> str | None:
    return next((s.source for s in definition.scores if s.name == name), None)


def id_text(value: Any) -> str | None:
    """An id a property holds (an activity item's key, a related customer's id) as text:
    ``1234`` and ``1234.0`` (a number through gRPC's Struct) are one id; None for no id (a
    missing, empty, boolean or structured value)."""
    if value is None or isinstance(value, bool | Mapping | list):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _read(event: TrackedEvent, prop: str) -> Any:
    """What ``EVENT.PROPERTY`` reads: the event's source or type, or a dotted path in its
    properties (a scalar; a map or a list is not kept)."""
    if prop == "source":
        return event.source or None
    if prop == "type":
        return event.type
    value: Any = event.properties
    for part in prop.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, str) and not value.strip():
        return None  # an empty text says nothing: it does not replace what an attribute holds
    return None if isinstance(value, Mapping | list) else value
