"""TLS, mTLS and bearer tokens on the public port."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest

from client.library import AsrClient

pytestmark = pytest.mark.integration


def make_ca_and_cert(d: Path) -> dict[str, Path]:
    """A throwaway CA, a server cert for localhost/127.0.0.1 and a client cert."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (d / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test ca")).issuer_name(name("test ca"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca", ca_key, ca)
    for stem, san in (("server", [x509.DNSName("localhost"),
                                  x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                      ("client", [x509.DNSName("client")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(2 if stem == "server" else 3)
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write(stem, key, cert)
    return {p.stem + p.suffix: p for p in d.iterdir()}


def test_tokens(start_service, models_dir: Path, speech: dict[str, Path],  # type: ignore[no-untyped-def]
                tmp_path: Path) -> None:
    (tmp_path / "auth").write_text("s3cret\n")
    (tmp_path / "admin").write_text("adm1n\n")
    svc = start_service(models_dir / "sensevoice-tiny", auth_token_file=str(tmp_path / "auth"),
                        admin_token_file=str(tmp_path / "admin"))
    audio = speech["wav16k"].read_bytes()
    with AsrClient(svc.address) as anonymous, pytest.raises(grpc.RpcError) as info:
        anonymous.recognize_bytes(audio, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with AsrClient(svc.address, token="wrong") as wrong, pytest.raises(grpc.RpcError) as info:
        list(wrong.stream_file(speech["wav16k"], timeout=30))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with AsrClient(svc.address, token="s3cret") as user:
        assert user.recognize_bytes(audio, timeout=30).text
        assert user.transcribe_file(speech["flac"], timeout=30).text
        with pytest.raises(grpc.RpcError) as info:
            user.status()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with AsrClient(svc.address, token="adm1n") as admin:
        assert admin.status().devices


def test_tls_and_mtls(start_service, models_dir: Path, speech: dict[str, Path],  # type: ignore[no-untyped-def]
                      tmp_path: Path) -> None:
    files = make_ca_and_cert(tmp_path)
    svc = start_service(models_dir / "sensevoice-tiny", tls_cert=str(files["server.pem"]),
                        tls_key=str(files["server.key"]))
    address = f"localhost:{svc.port}"
    with AsrClient(address, tls_ca=str(files["ca.pem"])) as client:
        assert client.recognize_bytes(speech["wav16k"].read_bytes(), timeout=30).text
    with AsrClient(address) as plaintext, pytest.raises(grpc.RpcError) as info:
        plaintext.recognize_bytes(speech["wav16k"].read_bytes(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    mtls = start_service(models_dir / "sensevoice-tiny", tls_cert=str(files["server.pem"]),
                         tls_key=str(files["server.key"]), tls_client_ca=str(files["ca.pem"]))
    address = f"localhost:{mtls.port}"
    with AsrClient(address, tls_ca=str(files["ca.pem"])) as no_cert, \
            pytest.raises(grpc.RpcError):
        no_cert.recognize_bytes(speech["wav16k"].read_bytes(), timeout=10)
    with AsrClient(address, tls_ca=str(files["ca.pem"]), tls_cert=str(files["client.pem"]),
                   tls_key=str(files["client.key"])) as client:
        assert client.recognize_bytes(speech["wav16k"].read_bytes(), timeout=30).text
