"""The HTTP/JSON API (``--http-port``): the gRPC API's calls over HTTP, for every caller that cannot
speak gRPC. ``app`` serves the routes of ``routes`` with the messages' JSON (``schema``) and the
OpenAPI document (``openapi``); ``server`` runs it beside the gRPC server."""
