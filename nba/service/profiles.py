"""ProfileService: touch-point events in, customer profiles out (protobuf in, nba.profiles
calls, protobuf out)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from nba.decision.decider import DecideInput, Decider
from nba.errors import FailedPrecondition, InvalidArgument, NbaError, NotFound
from nba.governance.erasure import Eraser
from nba.inputs import timestamp
from nba.policy.profile import ProfileDefinition
from nba.profiles.profile import Profile
from nba.profiles.tracking import Tracker, TrackInput, TrackResult
from nba.records import DecisionRecord
from nba.service.auth import current_caller, may
from nba.service.context import properties_from_struct
from nba.service.servicers import decide_response, item_error, per_item
from nba.storage.engine import utc
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

__all__ = ["MAX_BATCH", "ProfileHistory", "ProfileServicer"]

#: events in one TrackBatch call, at most
MAX_BATCH = 10_000


#: timeline events and decisions a GetProfile answers: by default, and at most
TIMELINE_DEFAULT, TIMELINE_MAX = 20, 500
DECISIONS_DEFAULT, DECISIONS_MAX = 10, 100


class ProfileHistory(Protocol):
    """What GetProfile reads besides the profile (``nba.storage.store.Store`` is one)."""

    def snapshot(self) -> AbstractContextManager[Any]: ...

    def timeline(
        self, customer_id: str, limit: int, before: tuple[datetime, str] | None = None, conn: Any = None
    ) -> list[tuple[str, str, str, datetime, datetime, dict[str, Any]]]: ...

    def absorbed_ids(self, customer_id: str, conn: Any = None) -> list[str]: ...

    def relationships(self, customer_id: str, conn: Any = None) -> list[tuple[str, str, datetime, str]]: ...

    def for_customers(self, customer_ids: list[str], limit: int, conn: Any = None) -> list[tuple[DecisionRecord, list[Any]]]: ...


class ProfileServicer(ppb_grpc.ProfileServiceServicer):
    def __init__(
        self,
        tracker: Tracker,
        clock: Any,
        history: ProfileHistory | None = None,
        decider: Decider | None = None,
        eraser: Eraser | None = None,
        pii_role: str = "editor",
    ) -> None:
        self._tracker = tracker
        self._clock = clock
        self._history = history
        self._decider = decider
        self._eraser = eraser
        #: the least role shown personal data
        self._pii_role = pii_role

    def Track(self, request: ppb.TrackRequest, context: grpc.ServicerContext) -> ppb.TrackResponse:
        return self._track(request)

    def TrackBatch(self, request: ppb.TrackBatchRequest, context: grpc.ServicerContext) -> ppb.TrackBatchResponse:
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument(f"events: {len(request.events)} events, more than {MAX_BATCH} a call; split the batch")
        outcomes = per_item(request.events, self._input, self._tracker.track_many)
        return ppb.TrackBatchResponse(
            results=[
                ppb.TrackResult(**item_error(n, outcome))
                if isinstance(outcome, NbaError)
                else ppb.TrackResult(tracked=_response(outcome))
                for n, outcome in enumerate(outcomes)
            ]
        )

    def GetProfile(self, request: ppb.GetProfileRequest, context: grpc.ServicerContext) -> ppb.Profile:
        if bool(request.identifier_kind) != bool(request.identifier_value):
            raise InvalidArgument(
                "identifier_value: give identifier_kind and identifier_value together", field="identifier_value"
            )
        timeline_limit = _limit("timeline_limit", request.timeline_limit, TIMELINE_DEFAULT, TIMELINE_MAX)
        decisions_limit = _limit("decisions_limit", request.decisions_limit, DECISIONS_DEFAULT, DECISIONS_MAX)
        before = _page_token(request.timeline_page_token) if request.timeline_page_token else None
        if request.next_best_actions_limit < 0:
            raise InvalidArgument(
                f"next_best_actions_limit: must be 0 or more (0 means 1), got {request.next_best_actions_limit}",
                field="next_best_actions_limit",
            )
        channel = request.next_best_actions_channel
        if channel and self._decider is not None and channel not in self._decider.policy_set.channels:
            raise InvalidArgument(
                f"next_best_actions_channel: {channel[:80]!r} is not one of the policy set's channels "
                f"({', '.join(self._decider.policy_set.channels)})",
                field="next_best_actions_channel",
            )
        wanted = _read_mask(request)
        found = self._tracker.lookup(
            request.customer_id, request.identifier_kind, request.identifier_value, identities="identities" in wanted
        )
        if found is None:
            raise NotFound("customer_id: no profile for this customer (no event has named it)")
        profile, identities = found
        now = self._clock.now().timestamp()
        view = profile.values(now)
        segments = profile.current_segments(now) if profile.definition.segments else {}
        personal = not may(current_caller().role, self._pii_role)
        if personal:  # below the role that may see personal data: it is masked
            view = {k: MASK if k in profile.definition.pii and v is not None else v for k, v in view.items()}
            identities = {kind: [MASK for _ in values] for kind, values in identities.items()}
        attributes, computed = struct_pb2.Struct(), struct_pb2.Struct()
        sources = _personal_properties(profile.definition) if personal else set()
        personal_keys = {a.name for a in profile.definition.activities if {a.key, a.status} & sources}
        attributes.update({k: v for k, v in view.items() if k in profile.attributes})
        computed.update({k: v for k, v in view.items() if k in profile.computed})
        answer = ppb.Profile(
            customer_id=profile.customer_id,
            version=profile.version,
            created_at=_stamp(profile.created_at),
            identities=[ppb.Identifier(kind=k, value=v) for k, values in sorted(identities.items()) for v in values],
            attributes=attributes,
            computed=computed,
            activity=[
                ppb.ActivityItem(
                    activity=name,
                    key=MASK if name in personal_keys else key,
                    status=MASK if name in personal_keys else item["status"],
                    open=is_open,
                    since=_stamp(item["since"]),
                    updated_at=_stamp(item["updated_at"]),
                    last_event_type=item["type"],
                )
                for name, key, item, is_open in profile.items()
            ],
            scores=self._scores(profile, view),
            segments=[ppb.SegmentMembership(name=name, since=_stamp(since)) for name, since in sorted(segments.items())],
        )
        if self._history is not None and wanted & {"timeline", "merged_ids", "decisions", "relationships"}:
            with self._history.snapshot() as conn:
                self._add_history(answer, conn, profile.customer_id, timeline_limit, before, decisions_limit, wanted)
            if personal:
                # a property personal data is kept from is personal on every event type that sends it
                for event in answer.timeline:
                    for name in [n for n in event.properties if n in sources]:
                        event.properties[name] = MASK
        if request.next_best_actions_channel and self._decider is not None and "next_best_actions" in wanted:
            record = self._decider.rank_only(
                DecideInput(
                    customer_id=profile.customer_id,
                    channel=request.next_best_actions_channel,
                    limit=request.next_best_actions_limit,
                )
            )
            answer.next_best_actions.extend(decide_response(record, False).offers)
        for name in _PROFILE_FIELDS - wanted:
            answer.ClearField(name)
        return answer

    def Unmerge(self, request: ppb.UnmergeRequest, context: grpc.ServicerContext) -> ppb.UnmergeResponse:
        result = self._tracker.unmerge(request.customer_id, current_caller().name)
        return ppb.UnmergeResponse(
            customer_id=result.customer_id,
            survivor_id=result.survivor,
            merged_ids=result.merged_ids,
            version=result.version,
            survivor_version=result.survivor_version,
        )

    def _scores(self, profile: Profile, values: Mapping[str, Any]) -> list[ppb.ScoreValue]:
        models = self._tracker.scores
        if models is None or not profile.definition.scores:
            return []
        pii = profile.definition.pii
        now = models.predict_all({k: v for k, v in values.items() if k not in pii})
        quality = models.quality()
        return [
            ppb.ScoreValue(
                name=name,
                value=value,
                auc=quality[name]["auc"],
                examples=quality[name]["examples"],
                positives=quality[name]["positives"],
                calibration_error=quality[name]["calibration_error"],
                flagged=quality[name]["flagged"],
            )
            for name, value in now.items()
        ]

    def ForgetCustomer(self, request: ppb.ForgetCustomerRequest, context: grpc.ServicerContext) -> ppb.ForgetCustomerResponse:
        if self._eraser is None:
            raise FailedPrecondition("ForgetCustomer: this server has no store to forget in")
        result = self._eraser.forget(
            request.customer_id, request.identifier_kind, request.identifier_value, current_caller().name, request.reason
        )
        return ppb.ForgetCustomerResponse(
            pseudonym=result.pseudonym,
            customer_ids=list(result.customer_ids),
            erased=result.counts,
            forgotten_before=result.forgotten_before,
        )

    def _add_history(
        self,
        answer: ppb.Profile,
        conn: Any,
        customer_id: str,
        limit: int,
        before: tuple[datetime, str] | None,
        decisions: int,
        wanted: frozenset[str],
    ) -> None:
        assert self._history is not None
        events = self._history.timeline(customer_id, limit + 1, before, conn) if "timeline" in wanted else []
        for event_id, event_type, source, occurred, received, properties in events[:limit]:
            values = struct_pb2.Struct()
            values.update(properties)
            answer.timeline.append(
                ppb.TimelineEvent(
                    event_id=event_id,
                    type=event_type,
                    source=source,
                    occurred_at=_stamp(occurred.timestamp()),
                    received_at=_stamp(received.timestamp()),
                    properties=values,
                )
            )
        if len(events) > limit:
            last = events[limit - 1]
            answer.next_timeline_page_token = _token(last[3], last[0])
        if "relationships" in wanted:
            answer.relationships.extend(
                ppb.Relationship(kind=kind, customer_id=other, since=_stamp(since.timestamp()), event_id=event_id)
                for kind, other, since, event_id in self._history.relationships(customer_id, conn)
            )
        if not wanted & {"merged_ids", "decisions"}:
            return
        absorbed = self._history.absorbed_ids(customer_id, conn)
        if "merged_ids" in wanted:
            answer.merged_ids.extend(absorbed)
        if "decisions" not in wanted:
            return
        for record, feedback in self._history.for_customers([customer_id, *absorbed], decisions, conn):
            answer.decisions.append(
                ppb.ProfileDecision(
                    decision_id=record.decision_id,
                    customer_id=record.customer_id,
                    channel=record.channel,
                    decided_at=_stamp(record.created_at.timestamp()),
                    policy_version=record.policy_version,
                    profile_version=record.profile_version or 0,
                    offer_ids=[o["offer_id"] for o in record.offers],
                    feedback=[
                        ppb.ProfileFeedback(
                            event_id=fb.event_id,
                            offer_id=fb.offer_id,
                            outcome=fb.outcome,
                            reward=fb.reward,
                            occurred_at=_stamp(utc(fb.occurred_at).timestamp()),
                        )
                        for fb in feedback
                    ],
                )
            )

    def _track(self, request: ppb.TrackRequest) -> ppb.TrackResponse:
        return _response(self._tracker.track(self._input(request)))

    @staticmethod
    def _input(request: ppb.TrackRequest) -> TrackInput:
        occurred = timestamp("occurred_at", request.occurred_at) if request.HasField("occurred_at") else None
        return TrackInput(
            event_id=request.event_id,
            type=request.type,
            customer_id=request.customer_id,
            identities=dict(request.identities),
            source=request.source,
            occurred_at=occurred,
            properties=properties_from_struct(request.properties),
        )


#: what a caller below the personal-data role reads in place of personal data
MASK = "***"


def _personal_properties(definition: ProfileDefinition) -> set[str]:
    """The event properties personal data is kept or computed from (their first name)."""
    names = {prop.split(".")[0] for _, prop, _, pii in definition.attributes.values() if pii}
    names.update(c.property.split(".")[0] for c in definition.computed if c.name in definition.pii and c.property)
    return names


def _response(result: TrackResult) -> ppb.TrackResponse:
    return ppb.TrackResponse(
        duplicate=result.duplicate,
        customer_id=result.customer_id,
        merged=list(result.merged),
        version=result.version,
        duplicate_of=result.duplicate_of,
    )


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Epoch seconds as a Timestamp, to the microsecond: every time nba stores has that
    precision, and a float of today's epoch seconds carries noise below it."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(round(seconds * 1e6))
    return stamp


def _limit(name: str, value: int, default: int, most: int) -> int:
    if value < 0 or value > most:
        raise InvalidArgument(f"{name}: must be 0 (the default, {default}) to {most}, got {value}", field=name)
    return value or default


def _token(occurred: datetime, event_id: str) -> str:
    """An opaque page token: where the page ended."""
    raw = json.dumps([occurred.astimezone(UTC).isoformat(), event_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _page_token(token: str) -> tuple[datetime, str]:
    try:
        if len(token) > 2048:
            raise ValueError("too long for a page token")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        at, event_id = json.loads(raw)
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None or not isinstance(event_id, str):
            raise ValueError("not a page token")
        return moment.astimezone(UTC), event_id  # as stored: SQLite compares the text
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise InvalidArgument(
            "timeline_page_token: not a token this service gave (pass next_timeline_page_token as it came)",
            field="timeline_page_token",
        ) from None


_PROFILE_FIELDS = frozenset(f.name for f in ppb.Profile.DESCRIPTOR.fields)


def _read_mask(request: ppb.GetProfileRequest) -> frozenset[str]:
    """The Profile fields asked for (all without a mask); raises naming an unknown path."""
    fields = _PROFILE_FIELDS
    if not request.read_mask.paths:  # unset or empty: every field (AIP-157)
        return fields
    for n, path in enumerate(request.read_mask.paths):
        if path not in fields:
            raise InvalidArgument(
                f"read_mask.paths[{n}]: '{path[:80]}' is not a field of Profile ({', '.join(sorted(fields))})",
                field=f"read_mask.paths[{n}]",
            )
    return frozenset(request.read_mask.paths)
