"""The service shell: wiring, the gRPC server, health, reflection, metrics, graceful shutdown.

``create_server(settings) -> (service, port)`` builds everything and starts serving; tests
bind port 0. Readiness (gRPC health ``SERVING``) is reported only once the policy set is live
and the model restored. ``stop()`` reports ``NOT_SERVING``, lets calls in flight finish, then
writes every queued decision and a final model snapshot.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from prometheus_client import start_http_server

from bandit import limit_blas_threads, load_kernels
from nba import metrics
from nba.clock import Clock, SystemClock
from nba.config import ConfigError, Settings
from nba.decision.contacts import ContactHistory, OfferCounters
from nba.decision.decider import Decider
from nba.decision.reservations import LocalReservations, RedisReservations, Reservations
from nba.errors import InvalidArgument, NbaError, PolicySetError, Unavailable, field_violations
from nba.governance.erasure import FORGOTTEN, Eraser, Pseudonyms, naming
from nba.learning.feedback import IN_FLIGHT_MARGIN_SECONDS, FeedbackIntake
from nba.learning.loop import LearningLoop, build_learner
from nba.policy.policy_set import PolicySet
from nba.profiles.backfill import Backfill
from nba.profiles.cache import ProfileCache
from nba.profiles.identity import IdentityRules
from nba.profiles.scores import ScoreModels, load_river
from nba.profiles.segment_clock import SegmentClock
from nba.profiles.segments import time_dependent
from nba.profiles.tracking import Tracker
from nba.records import ContactEvent, LearningEvent, RewardWindows
from nba.service.auth import AuthInterceptor, Tokens
from nba.service.console.app import Console, console_routes
from nba.service.console.sessions import Sessions
from nba.service.context import MAX_CONTEXT_DEPTH, load_wire
from nba.service.evaluations import EvaluationJobs
from nba.service.http.app import create_app
from nba.service.http.callbacks import Callbacks, CallbackSources
from nba.service.http.server import HttpServer
from nba.service.maintenance import COUNTER_SECONDS, Maintenance
from nba.service.profiles import ProfileServicer
from nba.service.publishing import Publisher
from nba.service.servicers import AdminServicer, DecisionServicer
from nba.storage.bus import RedisBus
from nba.storage.decision_log import DecisionLog, LogOptions
from nba.storage.engine import open_engine
from nba.storage.store import Store
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import admin_service_pb2_grpc as apb_grpc
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

__all__ = ["DecodingInterceptor", "ErrorInterceptor", "Service", "create_server"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE_NAME = apb.DESCRIPTOR.services_by_name["AdminService"].full_name
PROFILE_SERVICE_NAME = ppb.DESCRIPTOR.services_by_name["ProfileService"].full_name
#: health names of the dependencies: NOT_SERVING while the database (or the Redis bus) is down
STORE_HEALTH = "nba.store"
BUS_HEALTH = "nba.bus"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class ErrorInterceptor(grpc.ServerInterceptor):
    """Times every unary call and turns domain errors into their gRPC status."""

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        histogram = metrics.RPC_DURATION.labels(method)

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                return inner(request, context)
            except NbaError as exc:
                metrics.RPC_ERRORS.labels(method, exc.code).inc()
                abort(context, exc)
            except Exception:
                if context.code() is not None:  # already aborted by the handler
                    raise
                log.exception("unexpected error", extra={"method": method})
                metrics.RPC_ERRORS.labels(method, "INTERNAL").inc()
                context.abort(grpc.StatusCode.INTERNAL, "internal error; the service log has the details")
            finally:
                histogram.observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class DecodingInterceptor(grpc.ServerInterceptor):
    """Decodes every request itself, for every method of every service, so that a message
    protobuf cannot decode (random bytes, a field of the wrong wire type that corrupts the
    rest, invalid UTF-8 in a string, nesting beyond protobuf's own limit of about 33 context
    levels) is ``INVALID_ARGUMENT`` naming the message type, never gRPC's own ``INTERNAL``
    ("Exception deserializing request"). Innermost of the interceptors: the outer ones (auth,
    errors) pass the raw bytes through, so a caller without a token is still told that first.
    """

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary_unary(raw: bytes, context: grpc.ServicerContext) -> Any:
                return inner(_decoded(decode, raw), context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=handler.response_serializer)
        # Streaming methods (health Watch, reflection) are outside ErrorInterceptor: abort here.
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def unary_stream(raw: bytes, context: grpc.ServicerContext) -> Any:
                return inner_stream(_decoded_or_abort(decode, raw, context), context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=handler.response_serializer)
        stream = handler.stream_unary or handler.stream_stream
        make = grpc.stream_unary_rpc_method_handler if handler.stream_unary else grpc.stream_stream_rpc_method_handler

        def streaming(requests: Any, context: grpc.ServicerContext) -> Any:
            return stream((_decoded_or_abort(decode, raw, context) for raw in requests), context)

        return make(streaming, response_serializer=handler.response_serializer)


def _decoded(decode: Callable[[bytes], Any], raw: bytes) -> Any:
    """The request, or ``InvalidArgument`` saying why it is not one."""
    try:
        return decode(raw)
    except Exception as exc:  # DecodeError, and whatever else a parser may raise on hostile bytes
        message_type = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
        name = message_type.full_name if message_type is not None else "the request message"
        reason = str(exc).rsplit(": ", 1)[-1] or type(exc).__name__
        if "depth" in reason.lower() and message_type is not None and "context" in message_type.fields_by_name:
            raise InvalidArgument(
                f"context: nested deeper than protobuf decodes ({reason}); the context may be nested "
                f"{MAX_CONTEXT_DEPTH} levels at most"
            ) from None
        raise InvalidArgument(f"request: not a valid {name} ({reason}); build it from the proto files") from None


def reward_windows(settings: Settings) -> RewardWindows:
    """Each outcome's reward window and the default reward, as the settings give them."""
    return RewardWindows(
        {
            "impressed": settings.window_impressed_seconds,
            "clicked": settings.window_clicked_seconds,
            "accepted": settings.window_accepted_seconds,
            "rejected": settings.window_rejected_seconds,
        },
        settings.reward_default,
    )


def _decoded_or_abort(decode: Callable[[bytes], Any], raw: bytes, context: grpc.ServicerContext) -> Any:
    try:
        return _decoded(decode, raw)
    except InvalidArgument as exc:
        abort(context, exc)


def abort(context: grpc.ServicerContext, exc: NbaError) -> NoReturn:
    """Ends the call with the error's status and message. An ``INVALID_ARGUMENT`` also carries
    a ``google.rpc.BadRequest`` detail (``grpc-status-details-bin``: one field violation per
    field at fault, ``nba.errors.field_violations``), so a client can point at the field
    without parsing the text (``grpc_status.rpc_status.from_call``)."""
    violations = field_violations(exc)
    if not violations:
        context.abort(grpc.StatusCode[exc.code], str(exc))
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                for field, description in violations
            ]
        )
    )
    context.abort_with_status(
        rpc_status.to_status(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[detail]))
    )
    raise AssertionError("unreachable: abort_with_status raises")  # for the type checker


def tune_collector() -> None:
    """A serving process's garbage collector, set once everything start-up loads is loaded.
    That (the policy set, the model, the libraries) lives as long as the process: frozen out of
    the collector's sight, and collections made rarer. Each decision, and each tracked event,
    allocates many short-lived containers, and the default thresholds had the collector walk
    the whole heap (every cached decision and profile) often enough to cost about a sixth of a
    decision's CPU and a third of tracking's (make bench-tracking)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Service:
    """Everything one ``nba serve`` process runs."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        # One BLAS thread for the whole process, set before any request thread starts: the
        # learner's exact solves (forgetting) give results that differ in the last bits with
        # the thread count, and replicas must hold bit-identical models. The library's own
        # per-call context (bandit.blas) cannot promise that under OpenBLAS's pthreads build
        # when several threads call in (measured: 15% of solves ran on two threads).
        limit_blas_threads()
        # The compiled draw and context pass load (about 0.8 s of CPU: numba, then the cached
        # machine code) beside the rest of start-up, so that the first requests do not pay it.
        _preload("the compiled kernels", load_kernels, load_wire)
        self.settings = settings
        self.clock = clock or SystemClock()
        self._serving = False
        #: one of several worker processes sharing the port and the database
        self.is_worker = settings.workers > 1 and settings.worker >= 0
        #: learns the events other processes (workers, replicas) commit to the shared log
        self.shared = self.is_worker or settings.bus != "local"
        self.worker = max(settings.worker, 0)
        self.engine = open_engine(settings.database_url)
        self.store = Store(self.engine, reward_windows(settings), origin=f"{socket.gethostname()}:{os.getpid()}")
        _, start_contact_id = self.store.last_ids()
        self.contacts = ContactHistory(self._load_contacts, settings.contact_history_days * 86400, settings.contact_customers)
        self.counters = OfferCounters()
        self.counters.load(self.store.counter_rows(), recent_since=self.clock.now().timestamp() - COUNTER_SECONDS)
        self.learning = LearningLoop(build_learner(settings), settings.snapshot_seconds, settings.reward_range)
        self.decider: Decider | None = None
        # With several workers, the first watches the folder; all follow the database.
        folder = settings.policies if not self.is_worker or self.worker == 0 else None
        self.publisher = Publisher(self.store, folder, self._swap, self.clock)
        live = self.publisher.start()
        started = time.perf_counter()
        replayed = self.learning.restore(self.store, settings.seed)
        log.info(
            "model restored",
            extra={
                "model_version": self.learning.version,
                "replayed_events": replayed,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        self.profile_cache = ProfileCache(
            lambda customer_id, identities: self.tracker.load(customer_id, identities),
            lambda: self.publisher.live.profile,
            settings.profile_cache_size,
            fresh_seconds=self._profile_fresh_seconds,
            scorer=lambda values: self.scores.predict_all(values),
        )
        self.bus = (
            RedisBus(
                settings.bus,
                settings.bus_stream,
                self.store.origin,
                settings.bus_stream_length,
                on_state=self._bus_state,
            )
            if settings.redis_bus
            else None
        )
        self.maintenance = Maintenance(
            self.store,
            self.learning,
            self.contacts,
            self.counters,
            self.clock,
            settings.window_check_seconds,
            settings.decision_retention_days,
            settings.profile_event_retention_days,
        )
        self.log = DecisionLog(
            self.store,
            self,
            LogOptions(
                settings.log_flush_seconds, settings.log_batch_size, settings.log_queue_limit, settings.decision_cache_size
            ),
            shared=self.shared,
            bus=self.bus,
            applied_id=self.learning.last_feedback_id,
            contact_id=start_contact_id,
            forgotten=self._erase_again,
            forgotten_keys=self._forgotten_keys,
        )
        self.maintenance.log = self.log
        #: the predictive scores' models, shared by every process through the database
        self.scores = ScoreModels(self.store, lambda: self.publisher.live.profile)
        self.tracker = Tracker(
            self.store,
            lambda: self.publisher.live.profile,
            self.clock,
            cache=self.profile_cache,
            changed=self._profiles_changed,
            scores=self.scores,
        )
        #: rebuilds stored profiles when the live set changes the profile definition
        self.backfill = Backfill(self.tracker, lambda: self.publisher.live.profile, self.store.count_built_under_other)
        self._pseudonym_key: Pseudonyms | None = None
        #: forgets customers (ForgetCustomer): erased here, dropped from every cache
        self.eraser = Eraser(
            self.store,
            lambda: self.publisher.live.profile,
            self._pseudonyms,
            self._flush_log,
            self._forgotten,
            self.clock,
        )
        #: records segment entries and exits that time alone brings
        self.segment_clock = SegmentClock(
            self.tracker,
            self.store.segment_sizes,
            lambda: [s.name for s in self.publisher.live.profile.segments],
            lambda: bool(time_dependent(self.publisher.live.profile)[0] or self.publisher.live.profile.scores),
            settings.segment_clock_seconds,
            refresh=self._refresh_scores,
            quality=self._measure_quality,
        )
        if self.bus is not None:
            self.bus.start(self.log.deliver, self._profiles_heard)
        self.decider = Decider(
            live,
            self.learning,
            self.log,
            self.contacts,
            self.counters,
            settings.request_id_ttl_seconds,
            self.clock,
            durable_timeout_seconds=settings.feedback_timeout_seconds if settings.durable_decisions else None,
            reservations=self._reservations(),
            profiles=self.profile_cache.view,
        )
        self.intake = FeedbackIntake(
            self.log,
            settings.rewards(),
            settings.feedback_timeout_seconds,
            self.clock,
            settings.reward_range,
            # A decision another worker or replica made may not be written yet (write-behind);
            # alone, or with durable decisions, what is not known is unknown.
            in_flight_seconds=(
                settings.log_flush_seconds + IN_FLIGHT_MARGIN_SECONDS if self.shared and not settings.durable_decisions else 0.0
            ),
            poll_seconds=settings.log_flush_seconds,
        )
        self.health = health.HealthServicer()
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="nba-rpc"),
            interceptors=[ErrorInterceptor(), AuthInterceptor(settings.admin_tokens), DecodingInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # Workers share the port (the kernel spreads connections); alone, a second
                # server on the same port must fail rather than silently share it.
                ("grpc.so_reuseport", 1 if self.is_worker else 0),
            ],
        )
        #: the servicers, by service: gRPC's and the HTTP API's calls reach the same ones
        self.servicers: dict[str, Any] = {
            SERVICE_NAME: DecisionServicer(self.decider, self.intake, str(self.worker)),
            ADMIN_SERVICE_NAME: AdminServicer(
                self.publisher,
                self.store.recent_lines,
                self.learning,
                lambda: build_learner(settings),
                rollups=self.store,
                counters=self.counters,
                clock=self.clock,
            ),
            PROFILE_SERVICE_NAME: ProfileServicer(
                self.tracker, self.clock, self.store, self.decider, self.eraser, settings.pii_role
            ),
        }
        pb_grpc.add_DecisionServiceServicer_to_server(self.servicers[SERVICE_NAME], self.server)
        apb_grpc.add_AdminServiceServicer_to_server(self.servicers[ADMIN_SERVICE_NAME], self.server)
        ppb_grpc.add_ProfileServiceServicer_to_server(self.servicers[PROFILE_SERVICE_NAME], self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_SERVICE_NAME, PROFILE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server,
        )
        address = f"{settings.host}:{settings.port}"
        tls = settings.tls_credentials()
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            key, chain, client_ca = tls
            self.port = self.server.add_secure_port(
                address,
                grpc.ssl_server_credentials(
                    [(key, chain)],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
                ),
            )
        if self.port == 0:
            raise OSError(f"could not bind {settings.host}:{settings.port}")
        #: offline evaluations the console starts, each in a child process
        self.evaluations = EvaluationJobs(self.store, settings.database_url, self.clock, self._validate_draft)
        #: the HTTP/JSON API, when --http-port is not -1 (its port: http.port)
        self.http: HttpServer | None = None
        if settings.http_port >= 0:
            callbacks = None
            if settings.callback_sources is not None:
                try:
                    sources, keys = CallbackSources.load(settings.callback_sources)
                except InvalidArgument as exc:
                    raise ConfigError(f"{exc} (--callback-sources, NBA_CALLBACK_SOURCES)") from None
                callbacks = Callbacks(sources, keys, self.intake, self.store, self.clock)
            tokens = Tokens(settings.admin_tokens)
            methods = self._http_methods()
            console = Console(
                methods,
                # the signing key is made once and kept in the database: every worker and replica reads the same cookies
                Sessions(
                    tokens,
                    lambda: self.store.secret("console_session_key", lambda: secrets.token_hex(32)),
                    secure=tls is not None or settings.console_secure_cookies,
                    kept=self.store,
                ),
                lambda: self.publisher.live,
                self.store.find_decision,
                settings.pii_role,
                settings.threads,
                segment_sizes=self.store.segment_sizes,
                segment_history=self.store.segment_history,
                score_quality=self.scores.quality,
                recent_customers=self.store.recent_customers,
                evaluations=self.evaluations,
            )
            self.http = HttpServer(
                create_app(
                    methods,
                    tokens,
                    ready=lambda: not self._stopped.is_set(),
                    cors_origins=tuple(settings.http_cors_origins),
                    threads=settings.threads,
                    callbacks=callbacks,
                    console=console_routes(console),
                ),
                settings.host,
                settings.http_port,
                settings.tls_cert,
                settings.tls_key,
                settings.tls_client_ca,
                reuse_port=self.is_worker,
            )
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self._stopped = threading.Event()

    def _validate_draft(self, files: Mapping[str, str]) -> None:
        """A draft policy set checked as ValidatePolicySet checks it; ``PolicySetError`` if invalid."""
        compiled, problems = self.publisher.validate(files)
        if compiled is None:
            raise PolicySetError(problems)

    def _http_methods(self) -> dict[str, Callable[[Any, Any], Any]]:
        """Every unary method of the services, by full name (``/nba.v1.DecisionService/Decide``)."""
        methods: dict[str, Callable[[Any, Any], Any]] = {}
        for module in (pb, apb, ppb):
            for service in module.DESCRIPTOR.services_by_name.values():
                servicer = self.servicers[service.full_name]
                for method in service.methods:
                    methods[f"/{service.full_name}/{method.name}"] = getattr(servicer, method.name)
        return methods

    @property
    def policy_set(self) -> PolicySet:
        return self.publisher.live

    def _dependency(self, name: str, up: bool) -> None:
        """A dependency's health, under its own name: the service as a whole stays SERVING
        (Decide answers from memory), so load balancers keep sending it traffic."""
        if self._serving:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _profile_fresh_seconds(self) -> float:
        """How long a cached profile is trusted: for ever alone on the database or with the
        Redis bus up (other processes' changes arrive on it), a bounded time otherwise."""
        if not self.shared or (self.bus is not None and self.bus.up):
            return math.inf
        return self.settings.profile_cache_seconds

    def _bus_state(self, up: bool) -> None:
        self._dependency(BUS_HEALTH, up)
        if up:  # profile invalidations published while it was down were missed
            self.profile_cache.clear()

    def _profiles_heard(self, ids: list[str]) -> None:
        """Another replica changed these profiles; ``*``: it could not say which for a while.
        An id marked ``FORGOTTEN`` was forgotten: everything held of it goes."""
        if "*" in ids:
            self.profile_cache.clear()
        forgotten = [i[len(FORGOTTEN) :] for i in ids if i.startswith(FORGOTTEN)]
        if forgotten:
            self._drop_customers(forgotten)
        self.profile_cache.invalidate([i for i in ids if i != "*" and not i.startswith(FORGOTTEN)])

    def _forgotten(self, ids: list[str]) -> None:
        """This process forgot these customers: its caches drop them, and the others hear of it."""
        self._drop_customers(ids)
        if self.bus is not None:
            self.bus.publish_profiles([FORGOTTEN + i for i in ids])

    def _drop_customers(self, ids: list[str]) -> None:
        self.profile_cache.invalidate(ids)
        self.contacts.drop(ids)
        self.log.drop_customers(set(ids))

    def _measure_quality(self) -> None:
        """Each declared attribute's completeness into the metrics (one pass over the profiles)."""
        attributes = list(self.publisher.live.profile.attributes)
        if not attributes:
            return
        customers, held = self.store.completeness(attributes)
        for name, count in held.items():
            metrics.ATTRIBUTE_COMPLETENESS.labels(name).set(count / customers if customers else 0.0)

    def _refresh_scores(self) -> None:
        """What other processes learned, read; each score's quality into the metrics."""
        self.scores.refresh()
        for name, quality in self.scores.quality().items():
            metrics.SCORE_AUC.labels(name).set(quality["auc"])
            metrics.SCORE_EXAMPLES.labels(name).set(quality["examples"])
            metrics.SCORE_CALIBRATION.labels(name).set(quality["calibration_error"])
            metrics.SCORE_FLAGGED.labels(name).set(1 if quality["flagged"] else 0)

    def _erase_again(self, conn: Any, written: list[tuple[str, datetime]]) -> None:
        """In the decision log's write transaction: a decision or outcome of a customer that
        happened before they were forgotten (by any process), still queued here then, is erased
        again before the commit; what happened after their erasure is a new customer's."""
        pseudonyms = self._stored_pseudonyms(conn)
        if pseudonyms is None:
            return  # no key was ever made: nobody has been forgotten
        named: dict[str, tuple[str, datetime]] = {}
        for customer_id, when in written:
            pseudonym = pseudonyms.customer(customer_id)
            held = named.get(pseudonym)
            named[pseudonym] = (customer_id, min(when, held[1]) if held else when)
        found = self.store.forgotten_among(conn, list(named))
        if not found:
            return
        definition = self.publisher.live.profile
        names = naming(IdentityRules(definition.kinds, definition.default_region))
        for pseudonym, erased_at in sorted(found.items()):
            customer_id, earliest = named[pseudonym]
            if earliest <= erased_at:
                self.store.erase_customer(
                    conn,
                    [customer_id],
                    pseudonym,
                    pseudonyms.key,
                    self.clock.now(),
                    "decision log",
                    audit=False,
                    names=names,
                )

    def _forgotten_keys(self, conn: Any, customer_ids: set[str]) -> tuple[Callable[[str], str] | None, set[str]]:
        """Of these ids (pseudonyms, by their look), those of forgotten customers, and the key
        their feedback's event ids are stored under (see ``Feedback.store_feedback_batch``)."""
        pseudonyms = self._stored_pseudonyms(conn)
        if pseudonyms is None:
            return None, set()
        return pseudonyms.key, set(self.store.forgotten_among(conn, sorted(customer_ids)))

    def _stored_pseudonyms(self, conn: Any) -> Pseudonyms | None:
        """The keyed pseudonyms inside a write transaction, or None if no key was ever made."""
        if self._pseudonym_key is None and not self.settings.pseudonym_key:
            # (not made here: its write would wait on this transaction's own lock)
            stored = self.store.stored_secret(conn, "pseudonym_key")
            if stored is None:
                return None
            self._pseudonym_key = Pseudonyms(stored.encode())
        return self._pseudonyms()

    def _flush_log(self) -> None:
        """Everything the decision log holds written (before a customer is forgotten in it)."""
        try:
            self.log.flush(self.settings.feedback_timeout_seconds)
        except (TimeoutError, FutureTimeout):
            raise Unavailable(
                f"the decision log could not be written within {self.settings.feedback_timeout_seconds:g} s; "
                "try again (nothing was forgotten)"
            ) from None

    def _pseudonyms(self) -> Pseudonyms:
        """The keyed pseudonyms: the configured key, or one made once and kept in the database."""
        if self._pseudonym_key is None:
            key = self.settings.pseudonym_key or self.store.secret("pseudonym_key", lambda: secrets.token_hex(32))
            self._pseudonym_key = Pseudonyms(key.encode())
        return self._pseudonym_key

    def _profiles_changed(self, ids: list[str]) -> None:
        if self.bus is not None:
            self.bus.publish_profiles(ids)

    def _reservations(self) -> Reservations | None:
        """Exact caps and budgets counting decisions: through Redis for replicas on a Redis bus,
        a lock for a process alone; workers and replicas on the database bus rely on screening
        (bounded by how fast they hear each other)."""
        bus = self.bus
        if bus is not None:
            return RedisReservations(bus.client, f"{self.settings.bus_stream}:hold:", lambda: bus.up)
        return None if self.shared else LocalReservations()

    def _load_contacts(self, customer_id: str, since: float) -> list[ContactEvent]:
        decision_log = getattr(self, "log", None)  # set after the contact history, which asks it
        if decision_log is not None and not decision_log.available:  # do not wait on a database known to be down
            raise Unavailable("the database is unavailable")
        # an outage is DatabaseUnavailable (UNAVAILABLE): translated by the store
        return self.store.contact_events(customer_id, since, up_to=decision_log.contact_position if decision_log else None)

    def _swap(self, policy_set: PolicySet) -> None:
        policy_set.batches  # noqa: B018  # compiled now, not in the first decision it serves
        if policy_set.profile.scores:
            # river (about 0.75 s of CPU) only where a score needs it, and before it is asked
            # (a thread that finds it loaded returns at once; publishes are rare)
            _preload("river, for the predictive scores", load_river)
        self.contacts.horizon_seconds = max(self.settings.contact_history_days * 86400, policy_set.history_seconds)
        self.learning.describe_arms(
            {
                o.id: None if o.offer.fallback else [f"group={o.offer.group}", *(f"tag={t}" for t in o.offer.tags)]
                for o in policy_set.offers.values()
            }
        )
        if self.decider is not None:
            self.decider.policy_set = policy_set
        if self._serving:
            # a set that changes the profile definition (or drops it: segments left open are
            # closed): stored profiles follow; one that does not finds none to do
            self.backfill.start()
        if gc.get_freeze_count():
            # Started, so the heap was frozen out of the collector's sight (start()); the new
            # set is not. A large set is millions of objects: left to the collector, each full
            # collection would walk them all, in the middle of decisions (hundreds of ms at
            # 10,000 offers). Collected once now, in the publisher's thread, and frozen.
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    # The decision log's listener (nba.storage.decision_log.LogListener) ----------------

    def learned(self, events: list[LearningEvent]) -> None:
        self.learning.apply(events)

    def contacted(self, events: list[ContactEvent]) -> None:
        """This process's outcomes, and the other processes' decisions and outcomes."""
        for event in events:
            self.counters.add(event.offer_id, event.kind, event.at)
        self.contacts.record(events)
        metrics.CONTACT_CUSTOMERS.set(len(self.contacts))

    def state_changed(self, up: bool) -> None:
        self._dependency(STORE_HEALTH, up)

    def after_write(self) -> None:
        self.maintenance.run()

    def start(self) -> int:
        tune_collector()
        # Workers write their metrics to the supervisor's folder (prometheus-client's
        # multiprocess mode), and the supervisor serves them added up on the configured port.
        if self.settings.metrics_port >= 0 and not (self.is_worker and os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
            self._metrics_server, _ = start_http_server(self.settings.metrics_port)
            self.metrics_port = self._metrics_server.server_port
        self.server.start()
        if self.http is not None:
            self.http.start()
        self.publisher.watch(self.settings.policies_watch_seconds)
        for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        self.backfill.start()  # the definition may have changed while the service was down
        self.segment_clock.start()
        self._dependency(STORE_HEALTH, self.log.available)
        if self.bus is not None:
            self._dependency(BUS_HEALTH, self.bus.up)
        log.info(
            f"serving on port {self.port}"
            + (f" (worker {self.worker})" if self.is_worker else "")
            + (
                f", HTTP API on http{'s' if self.http.tls else ''}://localhost:{self.http.port}/v1 (described at /openapi.json)"
                if self.http is not None
                else ""
            )
            + (f", metrics on http://localhost:{self.metrics_port}/metrics" if self.metrics_port else ""),
            extra={
                "port": self.port,
                "http_port": self.http.port if self.http is not None else None,
                "metrics_port": self.metrics_port,
                "policy_version": self.policy_set.version,
                "offers": len(self.policy_set.offers),
                "database": self.engine.url.render_as_string(hide_password=True),
                "admin_tokens": len(self.settings.admin_tokens),
                "tls": "mutual" if self.settings.tls_client_ca else "on" if self.settings.tls_cert else "off",
                "bus": self.settings.bus,
            },
        )
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Graceful: refuse new work, finish calls in flight, flush the log, snapshot."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds if grace is None else grace
        self.publisher.stop()
        grpc_stopped = self.server.stop(grace)  # both drain at once: the grace is the same for both
        if self.http is not None:
            self.http.stop(grace)
        grpc_stopped.wait()
        self.evaluations.stop()
        self.backfill.stop()
        self.segment_clock.stop()
        self.log.close()
        if self.bus is not None:
            self.bus.close()
        try:
            self.learning.maybe_snapshot(self.store, force=True)
        except Exception as exc:  # the database is gone: the next start replays from the last snapshot
            log.error("no snapshot at shutdown", extra={"error": repr(exc)})
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.engine.dispose()
        log.info("stopped", extra={"model_version": self.learning.version})

    def wait(self) -> None:
        self.server.wait_for_termination()


def create_server(settings: Settings, clock: Clock | None = None) -> tuple[Service, int]:
    """Builds and starts the service; returns it with the port it serves on."""
    service = Service(settings, clock)
    return service, service.start()


def _preload(what: str, *loaders: Callable[[], object]) -> None:
    """Runs loaders (modules a request would otherwise import on first need) in a background
    thread; a failure is logged, and the first request that needs one tries again (and fails as
    it would)."""

    def load() -> None:
        try:
            for loader in loaders:
                loader()
        except Exception:
            log.exception("loading failed", extra={"loading": what})

    threading.Thread(target=load, name="nba-preload", daemon=True).start()
