"""A test token issuer: a real RSA key and certificate, real signed tokens, a certs server."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

INVOKER = "tasks@test-project.iam.gserviceaccount.com"
AUDIENCE = "https://tasks.test"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """Signs ID tokens like Google's, with a key of its own."""

    def __init__(self, kid: str = "test-key-1") -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-issuer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.signer = crypt.RSASigner.from_string(self.private_pem, key_id=kid)

    @property
    def certs(self) -> dict[str, str]:
        return {self.kid: self.cert_pem}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "sub": "1234567890",
            "email": INVOKER,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, **overrides: Any) -> str:
        """An RS256 token signed with this key; ``None`` overrides drop a claim."""
        return jwt.encode(self.signer, self.claims(**overrides)).decode()

    def unsigned_token(self, **overrides: Any) -> str:
        header = {"alg": "none", "typ": "JWT", "kid": self.kid}
        payload = self.claims(**overrides)
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."

    def hs256_token(self, **overrides: Any) -> str:
        """HS256 "signed" with the public key: the classic algorithm-confusion attack."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.kid}
        payload = json.dumps(self.claims(**overrides)).encode()
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(payload)}"
        mac = hmac.new(self.public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"


class CertsServer:
    """Serves ``{kid: certificate}`` JSON on loopback, counting fetches."""

    def __init__(self, certs: dict[str, str], max_age: int | None = 3600) -> None:
        self.certs = certs
        self.max_age = max_age
        self.fetches = 0
        self.status = 200
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.certs).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                if outer.max_age is not None:
                    self.send_header("Cache-Control", f"public, max-age={outer.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/oauth2/v1/certs"

    @contextmanager
    def running(self) -> Iterator[CertsServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(5)
