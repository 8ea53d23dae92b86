"""gRPC servicers: translate messages to domain calls and back; no decisions are made here.

Every string and time a caller sends is checked here or in the domain call it reaches, with
the shared rules of ``nba.inputs`` (ids, names, free text, timestamps)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from bandit import unflatten
from nba.clock import Clock, SystemClock
from nba.decision.contacts import OfferCounters
from nba.decision.decider import DecideInput, Decider
from nba.decision.screening import budget_burn
from nba.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NbaError,
    PolicySetError,
    Problem,
    field_of,
)
from nba.evaluation.overview import HOUR, SERIES_MEASURES, Figures, narrowed, overview, period, series_grain
from nba.evaluation.preview import preview
from nba.inputs import MAX_COMMENT_LENGTH, check_id, check_text, timestamp
from nba.learning.feedback import MAX_BATCH, FeedbackIntake, FeedbackItem
from nba.policy.policy_set import PolicySet
from nba.records import DecisionRecord, FeedbackResult
from nba.service.auth import current_caller
from nba.service.context import features_from_struct
from nba.service.publishing import MAX_FILES, Published, Publisher
from nba.storage.rollups import Rollups
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import admin_service_pb2_grpc as apb_grpc
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

__all__ = ["AdminServicer", "DecisionServicer", "item_error", "per_item"]

In = TypeVar("In")
Out = TypeVar("Out")


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(self, decider: Decider, intake: FeedbackIntake, worker: str = "0") -> None:
        self._decider = decider
        self._intake = intake
        # Says which worker answered (trailing metadata "nba-worker"): for operators, and for
        # the benchmark that times how fast feedback reaches every worker.
        self._worker = (("nba-worker", worker),)

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        record, replayed = self._decider.decide(
            DecideInput(
                customer_id=request.customer_id,
                channel=request.channel,
                features=features_from_struct(request.context),
                limit=request.limit,
                request_id=request.request_id,
                explain=request.explain,
            )
        )
        context.set_trailing_metadata(self._worker)
        return decide_response(record, replayed)

    def Feedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext) -> pb.FeedbackResponse:
        return _feedback_response(self._intake.receive(*_feedback_item(request)))

    def FeedbackBatch(self, request: pb.FeedbackBatchRequest, context: grpc.ServicerContext) -> pb.FeedbackBatchResponse:
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument(f"events: {len(request.events)} events, more than {MAX_BATCH} a call; split the batch")
        outcomes = per_item(request.events, _feedback_item, self._intake.receive_many)
        return pb.FeedbackBatchResponse(
            results=[
                pb.FeedbackResult(**item_error(n, outcome))
                if isinstance(outcome, NbaError)
                else pb.FeedbackResult(feedback=_feedback_response(outcome))
                for n, outcome in enumerate(outcomes)
            ]
        )


def per_item(
    requests: Iterable[Any], parse: Callable[[Any], In], take_many: Callable[[list[In]], Sequence[Out | NbaError]]
) -> list[Out | NbaError]:
    """A batch item by item: each request parsed (a malformed one keeps its error in its place),
    the parsed ones taken together, and every outcome returned in the order sent."""
    parsed: list[In | NbaError] = []
    for request in requests:
        try:
            parsed.append(parse(request))
        except NbaError as exc:
            parsed.append(exc)
    taken = iter(take_many([p for p in parsed if not isinstance(p, NbaError)]))
    return [p if isinstance(p, NbaError) else next(taken) for p in parsed]


def item_error(index: int, error: NbaError) -> dict[str, Any]:
    """A batch item's error as its result carries it: the status name, the message and the
    field at fault, both prefixed by the item's place (``events[3].event_id``)."""
    field = field_of(error)
    return {
        "error_code": error.code,
        "error_message": f"events[{index}]: {error}",
        "error_field": f"events[{index}].{field}" if field else "",
    }


def _feedback_item(request: pb.FeedbackRequest) -> FeedbackItem:
    try:
        outcome = pb.Outcome.Name(request.outcome).removeprefix("OUTCOME_").lower()
    except ValueError:
        outcome = f"unknown value {request.outcome}"
    occurred_at = timestamp("occurred_at", request.occurred_at) if request.HasField("occurred_at") else None
    reward = request.reward if request.HasField("reward") else None
    return (request.event_id, request.decision_id, request.offer_id, outcome, reward, occurred_at)


def _feedback_response(result: FeedbackResult) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(duplicate=result.duplicate, applied=result.applied, reward=result.reward, late=result.late)


def decide_response(record: DecisionRecord, replayed: bool) -> pb.DecideResponse:
    decided_at = timestamp_pb2.Timestamp()
    decided_at.FromDatetime(record.created_at)
    return pb.DecideResponse(
        decision_id=record.decision_id,
        offers=[
            pb.RankedOffer(
                offer_id=o["offer_id"],
                name=o["name"],
                score=o["score"],
                propensity=o["propensity"],
                treatment=o["treatment"],
                fallback=o["fallback"],
                group=o["group"],
            )
            for o in record.offers
        ],
        policy_version=record.policy_version,
        model_version=record.model_version,
        replayed=replayed,
        decided_at=decided_at,
        explanation=(
            pb.Explanation(
                offers=[_offer_explanation(e) for e in record.explanation],
                exploration=record.exploration,
                profile=_profile_struct(record.features),
            )
            if record.explanation is not None
            else None
        ),
        profile_version=record.profile_version or 0,
    )


def _profile_struct(features: dict[str, Any]) -> struct_pb2.Struct:
    """The decision's ``profile.*`` features, nested as rules read them."""
    profile = struct_pb2.Struct()
    profile.update(unflatten({k[8:]: v for k, v in features.items() if k.startswith("profile.")}))
    return profile


def _offer_explanation(entry: dict[str, Any]) -> pb.OfferExplanation:
    return pb.OfferExplanation(
        offer_id=entry["offer_id"],
        eligible=entry["eligible"],
        reason=entry.get("reason") or "",
        policy=entry.get("policy") or "",
        detail=entry.get("detail") or "",
        predicted=entry.get("predicted", 0.0),
        value=entry.get("value", 0.0),
        lever=entry.get("lever", 0.0),
        weight=entry.get("weight", 0.0),
        score=entry.get("score", 0.0),
        probability=entry.get("probability", 0.0),
        slot=entry.get("slot", 0),
        propensity=entry.get("propensity", 0.0),
        explored=entry.get("explored", False),
        fallback=entry.get("fallback", False),
    )


class AdminServicer(apb_grpc.AdminServiceServicer):
    """Policy sets over gRPC; authentication is the AuthInterceptor's."""

    def __init__(
        self,
        publisher: Publisher,
        recent: Callable[[int], list[dict[str, Any]]],
        learning: Any,
        make_learner: Callable[[], Any] | None = None,
        rollups: Rollups | None = None,
        counters: OfferCounters | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._publisher = publisher
        self._recent = recent
        self._learning = learning
        self._make_learner = make_learner
        self._rollups = rollups
        self._counters = counters
        self._clock = clock or SystemClock()

    def GetLivePolicySet(self, request: apb.GetLivePolicySetRequest, context: grpc.ServicerContext) -> apb.PolicySet:
        return _policy_set(self._publisher.refresh(), live=True, with_files=True)

    def _expect_live(self, expected: int, comment: str) -> None:
        """The same checks PublishPolicySet makes of its body, for Validate and Preview (one body
        for all three): the comment is free text, and expected_live_version must still be live."""
        check_text("comment", comment, max_length=MAX_COMMENT_LENGTH)
        _version("expected_live_version", expected)
        if not expected:
            return
        live = self._publisher.refresh().number  # the database's live version, as Publish checks it
        if expected != live:
            raise FailedPrecondition(
                f"expected_live_version: {expected} is not the live version (version {live} is); "
                "get the live set again, or leave expected_live_version out"
            )

    def ValidatePolicySet(
        self, request: apb.ValidatePolicySetRequest, context: grpc.ServicerContext
    ) -> apb.ValidatePolicySetResponse:
        self._expect_live(request.expected_live_version, request.comment)
        compiled, problems = self._publisher.validate(_draft(request.draft), context.time_remaining(), context.is_active)
        return apb.ValidatePolicySetResponse(
            valid=compiled is not None,
            problems=[_problem(p) for p in problems],
            content_hash=compiled.content_hash if compiled else "",
        )

    def PublishPolicySet(
        self, request: apb.PublishPolicySetRequest, context: grpc.ServicerContext
    ) -> apb.PublishPolicySetResponse:
        files = _draft(request.draft)
        _version("expected_live_version", request.expected_live_version)
        published = self._publisher.publish(
            files,
            actor=current_caller().name,
            source="api",
            comment=check_text("comment", request.comment, max_length=MAX_COMMENT_LENGTH),
            expected_live=request.expected_live_version,
            timeout=context.time_remaining(),
            is_active=context.is_active,
        )
        return _published(published)

    def RollbackPolicySet(
        self, request: apb.RollbackPolicySetRequest, context: grpc.ServicerContext
    ) -> apb.PublishPolicySetResponse:
        if request.version <= 0:
            raise InvalidArgument("version: required (a version number from ListPolicySetVersions)")
        _version("version", request.version)
        _version("expected_live_version", request.expected_live_version)
        published = self._publisher.rollback(
            request.version,
            actor=current_caller().name,
            comment=check_text("comment", request.comment, max_length=MAX_COMMENT_LENGTH),
            expected_live=request.expected_live_version,
            timeout=context.time_remaining(),
            is_active=context.is_active,
        )
        return _published(published)

    def ListPolicySetVersions(
        self, request: apb.ListPolicySetVersionsRequest, context: grpc.ServicerContext
    ) -> apb.ListPolicySetVersionsResponse:
        size = request.page_size or 50
        if not 0 < size <= 500:
            raise InvalidArgument(f"page_size: must be 1 to 500, got {request.page_size}")
        before = None
        if request.page_token:
            # str.isdigit() also takes "²" and Arabic digits, which int() refuses or misreads
            if _PAGE_TOKEN.fullmatch(request.page_token) is None or int(request.page_token) > MAX_VERSION:
                raise InvalidArgument("page_token: not a token from next_page_token (send it back unchanged, or none)")
            before = int(request.page_token)
        store = self._publisher.store
        rows = store.policy_set_versions(before, size + 1)
        live = self._publisher.refresh().number  # the database's live version, not a lagging memory of it
        versions = [
            apb.PolicySet(
                version=r.version,
                content_hash=r.content_hash,
                label=f"{r.version}-{r.content_hash[:12]}",
                created_at=_timestamp(r.created_at),
                created_by=r.created_by,
                comment=r.comment,
                live=r.version == live,
            )
            for r in rows[:size]
        ]
        activations = [
            apb.Activation(
                version=a.version, activated_at=_timestamp(a.activated_at), actor=a.actor, source=a.source, comment=a.comment
            )
            for a in store.activations(size)
        ]
        token = str(rows[size - 1].version) if len(rows) > size else ""
        return apb.ListPolicySetVersionsResponse(versions=versions, next_page_token=token, activations=activations)

    def PreviewPolicySet(
        self, request: apb.PreviewPolicySetRequest, context: grpc.ServicerContext
    ) -> apb.PreviewPolicySetResponse:
        last_n = request.last_n or 1000
        if not 0 < last_n <= MAX_PREVIEW:
            raise InvalidArgument(f"last_n: must be 1 to {MAX_PREVIEW}, got {request.last_n}")
        self._expect_live(request.expected_live_version, request.comment)
        draft, problems = self._publisher.validate(_draft(request.draft), context.time_remaining(), context.is_active)
        if draft is None:
            raise PolicySetError(problems)
        # a logged decision that breaks the contract is left out and named in the note (nba.evaluation.preview)
        report = preview(
            self._publisher.live, draft, self._recent(last_n), self._learning, self._make_learner, check=_call_alive(context)
        )
        return apb.PreviewPolicySetResponse(
            decisions=report.decisions,
            live_version=report.live_version,
            live=apb.PreviewTotals(**vars(report.live)),
            draft=apb.PreviewTotals(**vars(report.draft)),
            offers=[apb.OfferPreview(**vars(o)) for o in report.offers],
            warnings=[_problem(p) for p in problems],
            note=report.note,
            live_value=_value(report.live_value),
            draft_value=_value(report.draft_value),
        )

    def GetOverview(self, request: apb.GetOverviewRequest, context: grpc.ServicerContext) -> apb.Overview:
        start = timestamp("start_time", request.start_time) if request.HasField("start_time") else None
        end = timestamp("end_time", request.end_time) if request.HasField("end_time") else None
        for name in ("channel", "group", "offer_id"):
            check_id(name, getattr(request, name), required=False)
        now = self._clock.now()
        start, end = period(start, end, now)
        live = self._publisher.live
        first, end_hour = int(start.timestamp()) // HOUR, int(end.timestamp()) // HOUR
        groups = {offer_id: compiled.offer.group for offer_id, compiled in live.offers.items()}
        totals: list[tuple[str, str, str, float]] = []
        series: list[tuple[int, str, float]] = []
        if self._rollups is not None:
            origin, step = series_grain(start, end)
            totals = self._rollups.rollup_totals(first, end_hour, request.channel)
            series = self._rollups.rollup_series(
                first,
                end_hour,
                origin,
                step,
                SERIES_MEASURES,
                request.channel,
                narrowed(groups, request.group, request.offer_id),
            )
        found = overview(totals, series, start, end, groups, request.group, request.offer_id)
        return apb.Overview(
            start_time=_timestamp(found.start),
            end_time=_timestamp(found.end),
            bucket=found.bucket,
            totals=_figures(found.totals),
            by_channel=[apb.OverviewSlice(key=k, figures=_figures(f)) for k, f in found.by_channel.items()],
            by_group=[apb.OverviewSlice(key=k, figures=_figures(f)) for k, f in found.by_group.items()],
            by_offer=[apb.OverviewSlice(key=k, figures=_figures(f)) for k, f in found.by_offer.items()],
            series=[apb.OverviewPoint(start_time=_timestamp(t), figures=_figures(f)) for t, f in found.series.items()],
            filter_reasons=[
                apb.FilterReason(reason=reason, offer_id=offer, count=count)
                for (reason, offer), count in found.filter_reasons.items()
            ],
            budgets=[
                apb.BudgetBurn(
                    policy=b.policy,
                    offer_id=b.offer_id,
                    counts=b.counts,
                    period=b.period,
                    max=b.max,
                    spent=b.spent,
                    expected=b.expected,
                    paced=b.paced,
                )
                for b in (budget_burn(live, self._counters, now) if self._counters is not None else [])
            ],
        )


def _figures(figures: Figures) -> apb.OverviewFigures:
    return apb.OverviewFigures(
        decisions=figures.decisions,
        empty=figures.empty,
        fallbacks=figures.fallbacks,
        explored=figures.explored,
        offered=figures.offered,
        impressions=figures.impressions,
        clicks=figures.clicks,
        acceptances=figures.acceptances,
        rejections=figures.rejections,
        acceptance_rate=figures.acceptance_rate,
        value=figures.value,
        reward=figures.reward,
        exploration_rate=figures.exploration_rate,
        fallback_rate=figures.fallback_rate,
        feedback_events=figures.feedback_events,
        mean_learning_lag_seconds=figures.mean_learning_lag_seconds,
        mean_feedback_delay_seconds=figures.mean_feedback_delay_seconds,
        gain_over_uniform=figures.gain_over_uniform,
    )


def _call_alive(context: grpc.ServicerContext) -> Callable[[], None]:
    """A check that raises once the call's deadline has passed or its client has gone: work
    for a call nobody waits for stops."""

    def check() -> None:
        if not context.is_active():
            raise Cancelled("the call was cancelled; its preview was stopped")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(
                "the preview took longer than the call's deadline and was stopped: "
                "replay fewer decisions (last_n) or allow more time"
            )

    return check


#: the tokens ListPolicySetVersions hands out: a version number, in ASCII digits
_PAGE_TOKEN = re.compile(r"[0-9]{1,10}")
#: version numbers are 32-bit in the store (policy_sets.version)
MAX_VERSION = 2**31 - 1
#: the most logged decisions a preview replays
MAX_PREVIEW = 100_000


def _version(field: str, value: int) -> None:
    """A version number a caller names: 0 (none) to MAX_VERSION; beyond, no version can exist,
    and the database would refuse to compare it."""
    if not 0 <= value <= MAX_VERSION:
        raise InvalidArgument(f"{field}: must be a version number, 0 to {MAX_VERSION}, got {value}")


def _draft(draft: apb.PolicySetDraft) -> dict[str, str]:
    """A draft's files, each name a name and each text free text (``nba.inputs``)."""
    files = dict(draft.files)
    if len(files) > MAX_FILES:  # before looking at each: a draft of a million names is refused at once
        raise InvalidArgument(f"draft.files: {len(files)} files, more than {MAX_FILES}")
    for name, text in files.items():
        check_id("draft.files: a file name", name)
        check_text(f"draft.files[{name!r}]", text)
    return files


def _value(estimate: Any) -> apb.ValueEstimate | None:
    if estimate is None:
        return None
    return apb.ValueEstimate(
        estimator=estimate.estimator,
        value=estimate.value,
        low=estimate.low,
        high=estimate.high,
        ess=estimate.ess,
        warnings=estimate.warnings,
    )


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def _problem(problem: Problem) -> apb.Problem:
    return apb.Problem(
        severity=problem.severity,
        file=problem.file,
        offer=problem.offer,
        policy=problem.policy,
        field=problem.field,
        message=problem.message,
        line=problem.line,
    )


def _policy_set(policy_set: PolicySet, live: bool, with_files: bool) -> apb.PolicySet:
    return apb.PolicySet(
        version=policy_set.number,
        content_hash=policy_set.content_hash,
        label=policy_set.version,
        files=policy_set.files if with_files else {},
        offers=len(policy_set.offers),
        channels=list(policy_set.channels),
        live=live,
    )


def _published(published: Published) -> apb.PublishPolicySetResponse:
    return apb.PublishPolicySetResponse(
        live=_policy_set(published.policy_set, live=True, with_files=False),
        warnings=[_problem(p) for p in published.policy_set.warnings],
        unchanged=published.unchanged,
    )
