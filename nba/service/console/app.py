"""The console's pages and the JSON calls its pages make, as Starlette routes under ``/console``.

Every page and call needs a session (``nba.service.console.sessions``); every change needs the
session's CSRF token, and the role the gRPC method it calls needs (a viewer reads and previews,
an editor publishes and rolls back). Pages translate: what they show comes from the same
servicer methods the gRPC and HTTP APIs call, run as the signed-in caller, and from the
domain's read models (the live policy set, the decision log); they hold no business logic.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import anyio
import anyio.to_thread
import jinja2
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from nba.errors import (
    FailedPrecondition,
    InvalidArgument,
    NbaError,
    NotFound,
    PermissionDenied,
    Problem,
    Unauthenticated,
    Unavailable,
)
from nba.inputs import check_id
from nba.policy.policy_set import PolicySet, json_schema
from nba.profiles.scores import MIN_EXAMPLES
from nba.records import DecisionRecord
from nba.service.auth import acting_as, may, needed_role
from nba.service.console.sessions import COOKIE, Session, Sessions, check_csrf, check_origin
from nba.service.evaluations import EvaluationJobs
from nba.service.http.app import HTTP_STATUS, CallContext, bounded_body, parse_json, problem
from nba.service.publishing import MAX_DRAFT_BYTES, MAX_FILES
from nba.service.servicers import MAX_PREVIEW, MAX_VERSION
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import profile_service_pb2 as ppb

__all__ = ["Console", "console_routes"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
ADMIN = "/nba.v1.AdminService/"
PROFILES = "/nba.v1.ProfileService/"
#: the largest form a sign-in or rollback sends (a token, a comment)
MAX_FORM_BYTES = 64 * 1024
#: how long a wrong token waits for its answer
SIGN_IN_DELAY_SECONDS = 0.5


@dataclass
class Console:
    """What the console works on: the servicers' methods by full gRPC name, the sessions, the
    live policy set, the decision log's reader, the role that sees personal data."""

    methods: Mapping[str, Callable[[Any, Any], Message]]
    sessions: Sessions
    live: Callable[[], PolicySet]
    find_decision: Callable[[str], DecisionRecord | None]
    pii_role: str = "editor"
    threads: int = 8
    #: customers in each segment now; a segment's (hour, entries, exits) history
    segment_sizes: Callable[[], dict[str, int]] = dict
    segment_history: Callable[[str], list[tuple[int, int, int]]] = lambda name: []
    #: each score's progressive quality, by name (nba.profiles.scores.ScoreModels.quality)
    score_quality: Callable[[], dict[str, dict[str, Any]]] = dict
    #: the customers of the most recent decisions, newest first (the customers page's shortcuts)
    recent_customers: Callable[[int], list[tuple[str, datetime]]] = lambda limit: []
    #: offline evaluations run in the background (None: the page says they are off)
    evaluations: EvaluationJobs | None = None


def console_routes(console: Console) -> list[BaseRoute]:
    """The console's routes, to mount on the HTTP API's application."""
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    templates.filters["when"] = _when
    templates.filters["number"] = _number
    templates.filters["short"] = lambda v: f"{v:,.4g}" if isinstance(v, float) else f"{v:,}"
    templates.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
    limiter: list[anyio.CapacityLimiter] = []
    plotly = _plotly_path()

    async def in_thread(run: Callable[[], Any]) -> Any:
        if not limiter:
            limiter.append(anyio.CapacityLimiter(console.threads))
        return await anyio.to_thread.run_sync(run, limiter=limiter[0])

    async def call(session: Session, method: str, request: Message) -> Any:
        """A servicer method as the signed-in caller, with the role the method needs over gRPC."""
        needed = needed_role(method)
        if needed is not None and not may(session.caller.role, needed):
            raise PermissionDenied(
                f"'{session.caller.name}' is a {session.caller.role}; {method.rsplit('/', 1)[-1]} needs an {needed}"
            )
        target = console.methods[method]

        def run() -> Any:
            with acting_as(session.caller):
                return target(request, CallContext())

        return await in_thread(run)

    def render(request: Request, name: str, session: Session | None, status: int = 200, **values: Any) -> Response:
        page = templates.get_template(name).render(
            session=session,
            editor=session is not None and may(session.caller.role, "editor"),
            path=request.url.path,
            **values,
        )
        headers = {
            # the console's own scripts and styles only; no framing by other sites
            "content-security-policy": (
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                "script-src 'self'; frame-ancestors 'none'; form-action 'self'"
            ),
            "x-content-type-options": "nosniff",
            "referrer-policy": "same-origin",
            "cache-control": "no-store",
        }
        return Response(page, status, headers, media_type="text/html")

    def page(
        work: Callable[[Request, Session], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A page that needs a session: without one, to the sign-in page (and back after)."""

        async def handle(request: Request) -> Response:
            try:
                session = await in_thread(lambda: console.sessions.read(request.cookies.get(COOKIE)))
            except NbaError as exc:  # the database is away: the session cannot be checked
                return render(request, "error.html", None, HTTP_STATUS.get(exc.code, 500), message=str(exc), code=exc.code)
            if session is None:
                # back to the page after signing in; a form's target is no page to go back to
                back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    f"/console/sign-in?{urlencode({'next': back if request.method == 'GET' else '/console'})}", 303
                )
            try:
                return await work(request, session)
            except NbaError as exc:  # the status the HTTP API answers for the same error
                return render(request, "error.html", session, HTTP_STATUS.get(exc.code, 500), message=str(exc), code=exc.code)
            except Exception:
                log.exception("console page failed", extra={"path": request.url.path})
                return render(
                    request, "error.html", session, 500, message="the page failed; the service log has the details", code=""
                )

        return handle

    def api(work: Callable[[Request, Session], Awaitable[Any]], change: bool = True) -> Callable[[Request], Awaitable[Response]]:
        """A JSON call a page makes: a session, and for a change its CSRF token; errors are the
        HTTP API's problem details."""

        async def handle(request: Request) -> Response:
            try:
                session = await in_thread(lambda: console.sessions.read(request.cookies.get(COOKIE)))
                if session is None:
                    raise Unauthenticated("session: not signed in, or the session ended; sign in again")
                if change:
                    check_csrf(
                        session, request.headers.get("x-csrf-token"), request.headers.get("origin"), request.headers.get("host")
                    )
                answer = await work(request, session)
                return Response(orjson.dumps(answer), 200, {"cache-control": "no-store"}, media_type="application/json")
            except NbaError as exc:
                return problem(exc, request.url.path)
            except Exception:
                log.exception("console call failed", extra={"path": request.url.path})
                return problem(_Internal("internal error; the service log has the details"), request.url.path)

        return handle

    async def form_fields(request: Request) -> dict[str, list[str]]:
        """A form's fields (each name's values), at most ``MAX_FORM_BYTES``, read before it is whole."""
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise InvalidArgument("form: send it from the console's page")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise InvalidArgument(f"form: more than {MAX_FORM_BYTES:,} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_FORM_BYTES:
                raise InvalidArgument(f"form: more than {MAX_FORM_BYTES:,} bytes")
        try:
            return parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise InvalidArgument("form: not UTF-8 text") from None

    async def form(request: Request) -> dict[str, str]:
        return {name: values[0] for name, values in (await form_fields(request)).items()}

    async def body(request: Request) -> Any:
        """A JSON call's body, at most the HTTP API's ``MAX_BODY_BYTES``, read before it is whole."""
        return parse_json(await bounded_body(request))

    async def changed(request: Request, session: Session) -> dict[str, str]:
        """A form that changes something, its CSRF token checked."""
        fields = await form(request)
        check_csrf(session, fields.get("csrf"), request.headers.get("origin"), request.headers.get("host"))
        return fields

    # Sign-in -----------------------------------------------------------------------------

    async def sign_in_page(request: Request) -> Response:
        try:
            session = await in_thread(lambda: console.sessions.read(request.cookies.get(COOKIE)))
        except NbaError:
            session = None
        target = _next(request.query_params.get("next"))
        if session is not None:
            return RedirectResponse(target, 303)
        return render(request, "sign_in.html", None, next=target, error="")

    async def sign_in(request: Request) -> Response:
        try:
            fields = await form(request)
            check_origin(request.headers.get("origin"), request.headers.get("host"))
        except (InvalidArgument, PermissionDenied) as exc:
            return render(request, "sign_in.html", None, 400, next="/console", error=str(exc))
        target = _next(fields.get("next"))
        try:
            caller, value = await in_thread(lambda: console.sessions.sign_in(fields.get("token", "")))
        except Unauthenticated:
            await anyio.sleep(SIGN_IN_DELAY_SECONDS)  # a guesser's every try costs them this
            return render(
                request,
                "sign_in.html",
                None,
                401,
                next=target,
                error="That token is not one of the service's admin tokens. Paste the token alone: in "
                "NBA_ADMIN_TOKENS's name:role:token, the part after the second colon.",
            )
        except NbaError as exc:
            return render(request, "sign_in.html", None, HTTP_STATUS.get(exc.code, 500), next=target, error=str(exc))
        log.info("console sign-in", extra={"caller": caller.name, "role": caller.role})
        response = RedirectResponse(target, 303)
        response.headers.append("set-cookie", console.sessions.cookie_header(value))
        return response

    async def sign_out(request: Request, session: Session) -> Response:
        await changed(request, session)
        await in_thread(lambda: console.sessions.sign_out(session))
        response = RedirectResponse("/console/sign-in", 303)
        response.headers.append("set-cookie", console.sessions.sign_out_header())
        return response

    # Policies ----------------------------------------------------------------------------

    async def policies(request: Request, session: Session) -> Response:
        live = await in_thread(console.live)
        versions = await call(session, ADMIN + "ListPolicySetVersions", apb.ListPolicySetVersionsRequest(page_size=50))
        offers = [
            {
                "id": o.offer.id,
                "name": o.offer.name,
                "group": o.offer.group,
                "channels": ", ".join(o.offer.channels),
                "value": o.offer.value,
                "lever": o.offer.lever,
                "status": o.offer.status,
                "fallback": o.offer.fallback,
                "eligibility": o.offer.eligibility,
            }
            for o in live.offers.values()
        ]
        policies = [
            {"id": pid, "type": getattr(p, "type", ""), "description": getattr(p, "description", "")}
            for pid, p in live.policies.items()
        ]
        return render(
            request,
            "policies.html",
            session,
            live=live,
            offers=offers,
            policies=policies,
            versions=[_dict(v) for v in versions.versions],
            activations=[_dict(a) for a in versions.activations],
            notice=request.query_params.get("notice", ""),
        )

    async def draft(request: Request, session: Session) -> Response:
        live = await in_thread(console.live)
        files = {name: text for name, text in sorted(live.files.items())}
        return render(request, "draft.html", session, live=live, files=files)

    async def rollback(request: Request, session: Session) -> Response:
        fields = await changed(request, session)
        if not fields.get("comment", "").strip():
            raise InvalidArgument("comment: say why this version goes live again (it is kept with the activation)", "comment")
        version = _version(fields.get("version", ""), "version")
        expected = _version(fields.get("expected_live_version") or 0, "expected_live_version")
        answer = await call(
            session,
            ADMIN + "RollbackPolicySet",
            apb.RollbackPolicySetRequest(version=version, comment=fields.get("comment", ""), expected_live_version=expected),
        )
        notice = f"Version {answer.live.version} is live again ({answer.live.label})."
        return RedirectResponse(f"/console/policies?{urlencode({'notice': notice})}", 303)

    def _files(data: Any) -> dict[str, str]:
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise InvalidArgument("files: send the draft's files, name to YAML text", "files")
        files = data["files"]
        if len(files) > MAX_FILES:
            raise InvalidArgument(f"files: {len(files)} files, more than {MAX_FILES}", "files")
        for name, text in files.items():
            if not isinstance(text, str):
                raise InvalidArgument(f"files[{name[:64]!r}]: must be text", "files")
        if sum(len(text.encode()) for text in files.values()) > MAX_DRAFT_BYTES:
            raise InvalidArgument(f"files: more than {MAX_DRAFT_BYTES:,} bytes in all", "files")
        return files

    async def validate(request: Request, session: Session) -> Any:
        files = _files(await body(request))
        answer = await call(
            session, ADMIN + "ValidatePolicySet", apb.ValidatePolicySetRequest(draft=apb.PolicySetDraft(files=files))
        )
        return {"valid": answer.valid, "problems": [_problem(p) for p in answer.problems]}

    async def diff(request: Request, session: Session) -> Any:
        files = _files(await body(request))
        live = await in_thread(console.live)
        return {"files": await in_thread(lambda: _diff(live.files, files)), "live_version": live.number}

    async def preview(request: Request, session: Session) -> Any:
        data = await body(request)
        files = _files(data)
        last_n = data.get("last_n", 1000)
        if not isinstance(last_n, int) or isinstance(last_n, bool) or not 1 <= last_n <= MAX_PREVIEW:
            raise InvalidArgument(f"last_n: a whole number of decisions, 1 to {MAX_PREVIEW:,}", "last_n")
        answer = await call(
            session,
            ADMIN + "PreviewPolicySet",
            apb.PreviewPolicySetRequest(draft=apb.PolicySetDraft(files=files), last_n=last_n),
        )
        return _dict(answer)

    async def publish(request: Request, session: Session) -> Any:
        data = await body(request)
        files = _files(data)
        comment = data.get("comment")
        if not isinstance(comment, str) or not comment.strip():
            raise InvalidArgument("comment: say what the change is (it is kept with the version)", "comment")
        expected = _version(data.get("expected_live_version", 0), "expected_live_version")
        answer = await call(
            session,
            ADMIN + "PublishPolicySet",
            apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files), comment=comment, expected_live_version=expected),
        )
        return _dict(answer)

    async def schema(request: Request, session: Session) -> Any:
        return json_schema()

    # Customers ---------------------------------------------------------------------------

    async def customers(request: Request, session: Session) -> Response:
        query = request.query_params.get("q", "").strip()
        if not query:
            recent = await in_thread(lambda: console.recent_customers(20))
            return render(request, "customers.html", session, query="", error="", recent=recent)
        lookup = _lookup(query)
        lookup_request = ppb.GetProfileRequest(read_mask={"paths": ["customer_id"]})
        for name, value in lookup.items():
            setattr(lookup_request, name, value)
        try:
            found = await call(session, PROFILES + "GetProfile", lookup_request)
        except (NotFound, InvalidArgument) as exc:
            return render(request, "customers.html", session, 404, query=query, error=str(exc), recent=[])
        return RedirectResponse(f"/console/customers/{quote(found.customer_id, safe='')}", 303)

    async def customer(request: Request, session: Session) -> Response:
        customer_id = check_id("customer_id", request.path_params["customer_id"])
        live = await in_thread(console.live)
        channel = request.query_params.get("channel") or (live.channels[0] if live.channels else "")
        if channel and channel not in live.channels:
            raise InvalidArgument(f"channel: '{channel[:64]}' is not a channel of the live set ({', '.join(live.channels)})")
        answer = await call(
            session,
            PROFILES + "GetProfile",
            ppb.GetProfileRequest(
                customer_id=customer_id,
                timeline_limit=50,
                decisions_limit=20,
                next_best_actions_channel=channel,
                next_best_actions_limit=3,
            ),
        )
        profile = _dict(answer)
        return render(
            request,
            "customer.html",
            session,
            profile=profile,
            channel=channel,
            channels=list(live.channels),
            timeline=_timeline(profile),
            consent=live.profile.consent,
        )

    async def decision(request: Request, session: Session) -> Response:
        decision_id = check_id("decision_id", request.path_params["decision_id"])
        record = await in_thread(lambda: console.find_decision(decision_id))
        if record is None:
            raise NotFound(
                f"decision_id: no decision '{decision_id[:80]}' in the log (still being written, or deleted by retention)"
            )
        personal = may(session.caller.role, console.pii_role)
        candidates = record.candidate_list()
        if not personal:  # a rule's (or a weight's) error names the value it returned: perhaps a personal one
            for candidate in candidates:
                if (candidate.get("reason") == "rule_error" or candidate.get("eligible")) and candidate.get("detail"):
                    candidate["detail"] = f"(shown to the {console.pii_role} role: it may quote the context)"
        candidates.sort(key=lambda c: (not c.get("eligible"), c.get("slot") or 99, -(c.get("score") or 0)))
        return render(
            request,
            "decision.html",
            session,
            record=record,
            candidates=candidates,
            features=sorted(record.features.items()) if personal else None,
            pii_role=console.pii_role,
        )

    # Segments and scores -----------------------------------------------------------------

    async def segments(request: Request, session: Session) -> Response:
        live = await in_thread(console.live)
        definition = live.profile
        sizes = await in_thread(console.segment_sizes)
        day_ago = int(datetime.now(UTC).timestamp()) // 3600 - 24
        rows, series = [], []
        for segment in definition.segments:
            history = await in_thread(partial(console.segment_history, segment.name))
            times, counts, size = [], [], 0
            for hour, entered, exited in history:
                size += entered - exited
                times.append(datetime.fromtimestamp(hour * 3600, UTC).isoformat())
                counts.append(size)
            if times:
                times.append(datetime.now(UTC).isoformat())  # the size holds until now
                counts.append(size)
            series.append({"name": segment.name, "times": times, "sizes": counts})
            rows.append(
                {
                    "name": segment.name,
                    "description": segment.description,
                    "owner": segment.owner,
                    "rule": segment.rule.source,
                    "size": sizes.get(segment.name, 0),
                    "entered_24h": sum(e for h, e, _ in history if h >= day_ago),
                    "exited_24h": sum(x for h, _, x in history if h >= day_ago),
                }
            )
        quality = await in_thread(console.score_quality)
        scores = []
        for score in definition.scores:
            q = quality.get(score.name) or {}
            examples, positives = int(q.get("examples", 0)), int(q.get("positives", 0))
            few = min(positives, examples - positives) < MIN_EXAMPLES
            scores.append(
                {
                    "name": score.name,
                    "description": score.description,
                    "source": f"predicts {score.event}"
                    + (f" where {score.where.source}" if score.where is not None else "")
                    + f" within {_duration(score.horizon)}",
                    "examples": examples,
                    "positives": positives,
                    "auc": float(q.get("auc", 0.5)),
                    "min_auc": score.min_auc,
                    "calibration_error": float(q.get("calibration_error", 0.0)),
                    "log_loss": float(q.get("log_loss", 0.0)),
                    "verdict": ("flagged: too few labels" if few else f"flagged: AUC below {score.min_auc:g}")
                    if q.get("flagged", True)
                    else "worth using",
                }
            )
        chart = {"segments": series, "scores": [{"name": s["name"], "auc": s["auc"], "min_auc": s["min_auc"]} for s in scores]}
        return render(request, "segments.html", session, segments=rows, scores=scores, chart=chart)

    # Evaluation --------------------------------------------------------------------------

    def jobs() -> EvaluationJobs:
        if console.evaluations is None:
            raise Unavailable("evaluation: offline evaluation is not running in this process")
        return console.evaluations

    async def evaluations(request: Request, session: Session, error: str = "", status: int = 200) -> Response:
        found = await in_thread(lambda: jobs().list(50))
        versions = await call(session, ADMIN + "ListPolicySetVersions", apb.ListPolicySetVersionsRequest(page_size=50))
        return render(
            request,
            "evaluations.html",
            session,
            status,
            evaluations=found,
            versions=[_dict(v) for v in versions.versions],
            builtins=BUILT_IN_TARGETS,
            error=error,
        )

    async def start_evaluation(request: Request, session: Session) -> Response:
        fields = await form_fields(request)
        check_csrf(session, (fields.get("csrf") or [""])[0], request.headers.get("origin"), request.headers.get("host"))
        targets = list(fields.get("targets", []))
        settings = (fields.get("learner_settings") or [""])[0].strip()
        if settings:
            targets.append(f"learner:{settings}")
        targets += [f"version:{v}" for v in fields.get("versions", [])]
        wanted = {
            "targets": targets,
            "since": (fields.get("since") or [""])[0],
            "until": (fields.get("until") or [""])[0],
        }
        try:
            started = await in_thread(lambda: jobs().start(wanted, session.caller.name))
        except (InvalidArgument, FailedPrecondition) as exc:
            return await evaluations(request, session, str(exc), HTTP_STATUS[exc.code])
        return RedirectResponse(f"/console/evaluations/{started}", 303)

    def _evaluation_id(request: Request) -> int:
        text = request.path_params["evaluation_id"]
        if not text.isascii() or not text.isdigit() or len(text) > 10:
            raise NotFound(f"evaluation: no evaluation {text[:20]!r}")
        return int(text)

    async def evaluation(request: Request, session: Session) -> Response:
        found = await in_thread(lambda: jobs().get(_evaluation_id(request)))
        return render(request, "evaluation.html", session, e=found, report=found.get("report"))

    async def evaluate_draft(request: Request, session: Session) -> Any:
        data = await body(request)
        started = await in_thread(lambda: jobs().start(data, session.caller.name))
        return {"id": started}

    async def evaluation_state(request: Request, session: Session) -> Any:
        found = await in_thread(lambda: jobs().get(_evaluation_id(request)))
        return {k: found[k] for k in ("id", "status", "progress", "stage", "error")}

    # Assets ------------------------------------------------------------------------------

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js" and plotly is not None:
            return FileResponse(plotly, headers={"cache-control": "public, max-age=86400"})
        path = HERE / "static" / name
        if "/" in name or not re.fullmatch(r"[a-z_-]+\.(?:js|css)", name) or not path.is_file():
            return Response("not found", 404, media_type="text/plain")
        return FileResponse(path, headers={"cache-control": "no-cache"})

    async def home(request: Request, session: Session) -> Response:
        query = request.query_params
        chosen = {name: query.get(name, "") for name in ("period", "from", "to", "channel", "group", "offer")}
        chosen["period"] = chosen["period"] or "24h"
        start, end = _period(chosen["period"], chosen["from"], chosen["to"], datetime.now(UTC))
        ask = apb.GetOverviewRequest(channel=chosen["channel"], group=chosen["group"], offer_id=chosen["offer"])
        ask.start_time.FromDatetime(start)
        ask.end_time.FromDatetime(end)
        answer = await call(session, ADMIN + "GetOverview", ask)
        live = await in_thread(console.live)
        return render(
            request,
            "overview.html",
            session,
            overview=_dict(answer),
            chosen=chosen,
            periods=PERIODS,
            channels=list(live.channels),
            groups=sorted({o.offer.group for o in live.offers.values() if o.offer.group}),
            offers=sorted(live.offers),
        )

    return [
        Route("/console", page(home), methods=["GET"]),
        Route("/console/", page(home), methods=["GET"]),
        Route("/console/sign-in", sign_in_page, methods=["GET"]),
        Route("/console/sign-in", sign_in, methods=["POST"]),
        Route("/console/sign-out", page(sign_out), methods=["POST"]),
        Route("/console/static/{name}", static, methods=["GET"]),
        Route("/console/policies", page(policies), methods=["GET"]),
        Route("/console/policies/draft", page(draft), methods=["GET"]),
        Route("/console/policies/rollback", page(rollback), methods=["POST"]),
        Route("/console/api/validate", api(validate), methods=["POST"]),
        Route("/console/api/diff", api(diff), methods=["POST"]),
        Route("/console/api/preview", api(preview), methods=["POST"]),
        Route("/console/api/publish", api(publish), methods=["POST"]),
        Route("/console/api/schema", api(schema, change=False), methods=["GET"]),
        Route("/console/customers", page(customers), methods=["GET"]),
        # ids may hold a "/": the path converter takes the rest of the path
        Route("/console/customers/{customer_id:path}", page(customer), methods=["GET"]),
        Route("/console/decisions/{decision_id:path}", page(decision), methods=["GET"]),
        Route("/console/segments", page(segments), methods=["GET"]),
        Route("/console/evaluations", page(evaluations), methods=["GET"]),
        Route("/console/evaluations", page(start_evaluation), methods=["POST"]),
        Route("/console/evaluations/{evaluation_id}", page(evaluation), methods=["GET"]),
        Route("/console/api/evaluations", api(evaluate_draft), methods=["POST"]),
        Route("/console/api/evaluations/{evaluation_id}", api(evaluation_state, change=False), methods=["GET"]),
    ]


class _Internal(NbaError):
    code = "INTERNAL"


def _plotly_path() -> Path | None:
    """plotly.js as the plotly wheel ships it (the charts' only script not written here)."""
    try:
        import plotly
    except ImportError:  # pragma: no cover: plotly is a dependency
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


#: the evaluation page's ready-made targets (nba.service.evaluations)
BUILT_IN_TARGETS = [
    ("logged", "What was logged (the service's own choices)"),
    ("uniform", "Uniform random among the eligible offers"),
    ("popular", "The most accepted offer so far"),
    ("learner", "A learner of the default settings, replayed over the log"),
    ("live", "The live policy set, ranked by a learner replayed over the log"),
]

#: the overview's periods: (key, label); "custom" reads the from and to dates (UTC days, inclusive)
PERIODS = [
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days (today and the 6 before)"),
    ("30d", "Last 30 days"),
    ("90d", "Last 90 days"),
    ("custom", "From … to …"),
]
_PERIOD_DAYS = {"7d": 7, "30d": 30, "90d": 90}


def _period(key: str, first: str, last: str, now: datetime) -> tuple[datetime, datetime]:
    """A period the overview's form names, as start and end times."""
    if key == "24h":  # this hour and the 23 before it
        return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23), now
    if key in _PERIOD_DAYS:  # today and the days before it, whole UTC days
        return datetime.combine(now.date(), time(), UTC) - timedelta(days=_PERIOD_DAYS[key] - 1), now
    if key != "custom":
        raise InvalidArgument(f"period: one of {', '.join(k for k, _ in PERIODS)}", "period")
    try:
        start = datetime.combine(date.fromisoformat(first), time(), UTC)
        end = datetime.combine(date.fromisoformat(last), time(), UTC) + timedelta(days=1)
    except (ValueError, OverflowError):
        raise InvalidArgument("from: give both dates, as 2026-11-30", "from") from None
    return start, end


def _duration(seconds: float) -> str:
    """A score's horizon as its definition would write it: ``30d``, ``12h``, ``90m``, ``45s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _version(value: Any, field: str) -> int:
    """A version number from a form or a body: 0 (none) to ``MAX_VERSION``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: a version number", field)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{field}: a version number", field) from None
    if not 0 <= number <= MAX_VERSION:
        raise InvalidArgument(f"{field}: a version number, 0 to {MAX_VERSION}", field)
    return number


def _next(target: str | None) -> str:
    """Where to go after signing in: a console page, never another site."""
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console"


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _problem(problem: apb.Problem) -> dict[str, Any]:
    where = Problem(problem.message, problem.file, problem.offer, problem.policy, problem.field).location()
    return {
        "severity": problem.severity,
        "file": problem.file,
        "line": problem.line,
        "where": where,
        "message": problem.message,
    }


def _diff(live: Mapping[str, str], draft: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each file that differs, as unified-diff lines (kind: add, del, hunk, same)."""
    out = []
    for name in sorted(set(live) | set(draft)):
        before, after = live.get(name), draft.get(name)
        if before == after:
            continue
        status = "added" if before is None else "removed" if after is None else "changed"
        lines = []
        for line in difflib.unified_diff(
            (before or "").splitlines(), (after or "").splitlines(), f"live/{name}", f"draft/{name}", lineterm="", n=2
        ):
            if line.startswith(("---", "+++")):
                continue
            kind = (
                "hunk" if line.startswith("@@") else "add" if line.startswith("+") else "del" if line.startswith("-") else "same"
            )
            lines.append({"kind": kind, "text": line})
        out.append({"name": name, "status": status, "lines": lines})
    return out


#: identifiers a search box can be given as kind:value
_KIND_VALUE = re.compile(r"^([a-z][a-z0-9_]{0,63}):(.+)$")


def _lookup(query: str) -> dict[str, str]:
    """A search box's text as GetProfile's lookup: ``kind:value`` (``email:ann@example.com``), an
    e-mail address, a phone number (``+44 …``), or else a customer id."""
    found = _KIND_VALUE.match(query)
    if found and found.group(1) not in ("http", "https"):
        return {"identifier_kind": found.group(1), "identifier_value": found.group(2).strip()}
    if "@" in query and " " not in query:
        return {"identifier_kind": "email", "identifier_value": query}
    if query.startswith("+") and re.fullmatch(r"\+[0-9 ()\-]{6,24}", query):
        return {"identifier_kind": "phone", "identifier_value": query}
    return {"customer_id": query}


def _timeline(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Touch points and decisions in one list, newest first: each decision with its feedback."""
    entries: list[dict[str, Any]] = []
    for event in profile.get("timeline", []):
        entries.append({"at": event.get("occurred_at", ""), "kind": "event", "event": event})
    for item in profile.get("decisions", []):
        entries.append({"at": item.get("decided_at", ""), "kind": "decision", "decision": item})
    entries.sort(key=lambda e: e["at"], reverse=True)
    return entries


def _when(value: Any) -> str:
    """An RFC 3339 time (as the JSON mapping writes it) as ``2026-11-30 14:05:09 UTC``."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)  # autoescape escapes it
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e9 else f"{value:.3g}"
    return str(value)
