"""TLS on the gRPC and HTTP ports: plaintext callers are refused, and with a client CA, callers without
a certificate it signed are refused too. Certificates come from a throwaway CA (trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from conftest import customer, struct

from nba.config import ConfigError, load_settings
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

REQUEST = pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": customer()}))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("channel-system.example")
    outsider = stranger.issue_cert("intruder.example")
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return {
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "ca": folder / "ca.pem",
        "ca_pem": ca.cert_pem.bytes(),
        "client_key": client.private_key_pem.bytes(),
        "client_chain": client.cert_chain_pems[0].bytes(),
        "outsider_key": outsider.private_key_pem.bytes(),
        "outsider_chain": outsider.cert_chain_pems[0].bytes(),
    }


def secure(port: int, pki: dict, key: bytes | None = None, chain: bytes | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca_pem"], private_key=key, certificate_chain=chain)
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_tls_serves_verified_callers_and_refuses_plaintext(start, pki) -> None:
    server = start(tls_cert=pki["cert"], tls_key=pki["key"])
    with secure(server.port, pki) as channel:
        assert pb_grpc.DecisionServiceStub(channel).Decide(REQUEST, timeout=10).offers
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.Decide(REQUEST, timeout=5)  # the fixture's channel is plaintext
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_the_ca_signed(start, pki) -> None:
    server = start(tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["ca"])
    with secure(server.port, pki, pki["client_key"], pki["client_chain"]) as channel:
        assert pb_grpc.DecisionServiceStub(channel).Decide(REQUEST, timeout=10).offers
    for key, chain in ((None, None), (pki["outsider_key"], pki["outsider_chain"])):
        with secure(server.port, pki, key, chain) as channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.DecisionServiceStub(channel).Decide(REQUEST, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_are_checked_and_named(pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls_cert \(--tls-cert, NBA_TLS_CERT\) and tls_key .* go together"):
        load_settings({"tls_cert": str(pki["cert"])}, environ={})
    with pytest.raises(ConfigError, match="tls_client_ca .* needs tls_cert"):
        load_settings({"tls_client_ca": str(pki["ca"])}, environ={})
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(ConfigError, match=r"tls_key \(--tls-key, NBA_TLS_KEY\): .*not PEM"):
        load_settings({"tls_cert": str(pki["cert"]), "tls_key": str(tmp_path / "not.pem")}, environ={})
    with pytest.raises(ConfigError, match=r"tls_cert .*cannot read .*missing.pem"):
        load_settings({"tls_cert": str(tmp_path / "missing.pem"), "tls_key": str(pki["key"])}, environ={})


def test_the_http_api_serves_tls_with_the_same_certificate(start, pki) -> None:
    server = start(tls_cert=pki["cert"], tls_key=pki["key"], http_port=0)
    port = server.service.http.port
    body = {"customer_id": "c", "channel": "web", "context": {"customer": customer()}}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"])), timeout=10) as client:
        assert client.post(f"https://localhost:{port}/v1/decide", json=body).json()["offers"]
    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=5) as plain:
        plain.post(f"http://localhost:{port}/v1/decide", json=body)


def test_the_http_api_needs_a_client_certificate_under_mutual_tls(start, pki, tmp_path) -> None:
    server = start(tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["ca"], http_port=0)
    port = server.service.http.port
    (tmp_path / "client.pem").write_bytes(pki["client_chain"] + pki["client_key"])
    body = {"customer_id": "c", "channel": "web", "context": {"customer": customer()}}
    with_certificate = ssl.create_default_context(cafile=str(pki["ca"]))
    with_certificate.load_cert_chain(str(tmp_path / "client.pem"))
    with httpx.Client(verify=with_certificate, timeout=10) as client:
        assert client.post(f"https://localhost:{port}/v1/decide", json=body).json()["offers"]
    with (
        pytest.raises(httpx.HTTPError),
        httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"])), timeout=5) as anonymous,
    ):
        anonymous.post(f"https://localhost:{port}/v1/decide", json=body)
