"""The service shell: gRPC servicers and interceptors, the HTTP/JSON API over the same servicers,
and the one place that wires the parts.

    server       the composition root: builds store, learner, decider, publisher and log,
                 serves gRPC (health, reflection, metrics); the decision log's listener
    maintenance  reward windows, snapshots, compaction and retention, on the log's writer
    servicers    DecisionService and AdminService: protobuf in, domain calls, protobuf out
    http         the HTTP/JSON API: routes over the servicers, problem details, the OpenAPI
                 document, campaign callbacks, uvicorn beside gRPC
    profiles     ProfileService: touch-point events in, customer profiles out, merges undone
    auth         bearer tokens and roles (an interceptor; the HTTP API asks the same Tokens)
    context      a request's context (a protobuf Struct) to features, within size limits
    publishing   versioned publishing of policy sets, activation, rollback
    supervisor   worker processes sharing one port, restarted when they die

May import: everything in ``nba`` but ``nba.simulation`` and ``nba.cli``. Nothing imports it but
``nba.cli``.
"""
