"""Real servers on 127.0.0.1 for tests: S3 (moto in server mode), SMTP (aiosmtpd) and a webhook receiver.

Registered in conftest.py through ``pytest_plugins = ["tests.servers"]``, so every test module can ask for:

``s3_server``        an :class:`S3Server` (moto, one per session). The fixture also sets the AWS variables
                     (``testing`` / ``testing``, ``us-east-1``) for this test only; ``s3_server.make_bucket()``
                     gives a fresh bucket; pass ``s3_server.endpoint_url`` wherever an endpoint is needed
                     (``AWS_ENDPOINT_URL`` is removed, so code that forgets the endpoint fails instead of passing
                     by accident). ``s3_server.env`` holds the variables for a subprocess
                     (``SPACEPORT_S3_ENDPOINT_URL`` included).
``smtp_server``      an :class:`SmtpServer` (aiosmtpd, plain SMTP, no login), emptied before each test;
                     ``smtp_server.messages`` are the mails received, ``smtp_server.settings_env()`` the
                     ``SPACEPORT_SMTP_*`` values that point at it.
``smtp_tls_server``  the same, but STARTTLS is required before LOGIN (``testing`` / ``testing``) and before
                     mail; ``smtp_tls_server.client_context()`` trusts its self-signed certificate.
``webhook_receiver`` a :class:`WebhookReceiver` (http.server in a thread): records every request, answers 200,
                     ``fail_next(n)`` answers 500 to the next n requests, and with ``secret`` set it checks
                     ``X-Spaceport-Signature`` and answers 401 to a bad one.

The ``*_session`` fixtures are the same servers without the per-test reset, for session-scoped users (a
``spaceport serve`` subprocess shared by many tests, ...). Servers never listen on anything but 127.0.0.1.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SMTP_USER, SMTP_PASSWORD = "testing", "testing"


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for servers that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(condition: Any, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    """Poll ``condition()`` until it is truthy or ``timeout_s`` passes; returns its last truthiness."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


# -- S3 (moto server mode) --------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint_url: str

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should use this server."""
        return {**AWS_TEST_ENV, "SPACEPORT_S3_ENDPOINT_URL": self.endpoint_url}

    def client(self) -> Any:
        """A boto3 S3 client with explicit test credentials (independent of the environment)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=AWS_TEST_ENV["AWS_DEFAULT_REGION"],
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get_object(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` in ``bucket``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(item["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                      for item in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_session() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_server(s3_session: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return s3_session


# -- SMTP (aiosmtpd) --------------------------------------------------------------------------------------------


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool  # the session had switched to TLS (STARTTLS) when the mail was sent
    login: str | None  # the user name the client logged in with, if any

    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""

    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part is not None else ""


class _CollectingHandler:
    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        login = getattr(session.auth_data, "login", None) if session.authenticated else None
        self.messages.append(ReceivedMail(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos), message=message,  # type: ignore[arg-type]
            tls=session.ssl is not None, login=login.decode() if isinstance(login, bytes) else login))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: _CollectingHandler
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None

    @property
    def messages(self) -> list[ReceivedMail]:
        return self.handler.messages

    def clear(self) -> None:
        self.handler.messages.clear()

    def mails_about(self, job_id: str, timeout_s: float = 30.0) -> list[ReceivedMail]:
        """The mails whose subject names ``job_id``, once the first arrived (the server is shared by many jobs, so
        a count of mails says nothing about one job's)."""
        def about() -> list[ReceivedMail]:
            return [mail for mail in self.messages if job_id in mail.message["Subject"]]

        if not wait_until(about, timeout_s):
            raise AssertionError(f"no mail about job {job_id} within {timeout_s:.0f} s")
        return about()

    def settings_env(self) -> dict[str, str]:
        """``SPACEPORT_SMTP_*`` values that point Settings at this server."""
        env = {"SPACEPORT_SMTP_HOST": self.host, "SPACEPORT_SMTP_PORT": str(self.port),
               "SPACEPORT_SMTP_STARTTLS": str(self.starttls).lower()}
        if self.username:
            env |= {"SPACEPORT_SMTP_USERNAME": self.username, "SPACEPORT_SMTP_PASSWORD": self.password or ""}
        return env

    def settings_kwargs(self) -> dict[str, Any]:
        """The same as keyword arguments of ``Settings(...)``."""
        return {key.removeprefix("SPACEPORT_").lower(): value for key, value in self.settings_env().items()}

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this server's self-signed certificate (and nothing else)."""
        if self.ca_file is None:
            raise RuntimeError("this SMTP server has no TLS")
        return ssl.create_default_context(cafile=str(self.ca_file))


def write_self_signed_cert(folder: Path, host: str = LOOPBACK) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (IP and DNS names) and its key, as PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def _check_test_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
          and auth_data.password == SMTP_PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def _start_smtp(**smtp_options: Any) -> tuple[Any, _CollectingHandler, int]:
    from aiosmtpd.controller import Controller

    handler = _CollectingHandler()
    port = free_port()
    controller = Controller(handler, hostname=LOOPBACK, port=port, **smtp_options)
    controller.start()
    return controller, handler, port


@pytest.fixture(scope="session")
def smtp_session() -> Iterator[SmtpServer]:
    controller, handler, port = _start_smtp()
    try:
        yield SmtpServer(host=LOOPBACK, port=port, handler=handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server(smtp_session: SmtpServer) -> SmtpServer:
    smtp_session.clear()
    return smtp_session


@pytest.fixture(scope="session")
def smtp_tls_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    cert_file, key_file = write_self_signed_cert(tmp_path_factory.mktemp("smtp_tls"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    controller, handler, port = _start_smtp(tls_context=server_context, require_starttls=True,
                                            authenticator=_check_test_login, auth_require_tls=True)
    try:
        yield SmtpServer(host=LOOPBACK, port=port, handler=handler, starttls=True, username=SMTP_USER,
                         password=SMTP_PASSWORD, ca_file=cert_file)
    finally:
        controller.stop()


@pytest.fixture
def smtp_tls_server(smtp_tls_session: SmtpServer) -> SmtpServer:
    smtp_tls_session.clear()
    return smtp_tls_session


# -- webhook receiver -------------------------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered
    verified: bool | None  # signature check result; None when the receiver has no secret

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    host: str
    port: int
    secret: str | None = None  # when set, requests with a bad or stale signature get 401
    requests: list[ReceivedRequest] = field(default_factory=list)
    _fail_remaining: int = 0
    _fail_status: int = 500
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer ``status`` to the next ``count`` requests (a huge count: always)."""
        with self._lock:
            self._fail_remaining, self._fail_status = count, status

    def hooks_about(self, job_id: str, timeout_s: float = 30.0) -> list[ReceivedRequest]:
        """The webhook calls for ``job_id``, once the first arrived (see ``SmtpServer.mails_about``)."""
        def about() -> list[ReceivedRequest]:
            return [hook for hook in self.requests if hook.json()["job"]["id"] == job_id]

        if not wait_until(about, timeout_s):
            raise AssertionError(f"no webhook call about job {job_id} within {timeout_s:.0f} s")
        return about()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._fail_remaining, self._fail_status, self.secret = 0, 500, None

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            verified = None
            if self.secret is not None:
                from spaceport.jobs.notify import verify_signature

                verified = verify_signature(self.secret, headers.get("x-spaceport-timestamp"),
                                            headers.get("x-spaceport-signature"), body)
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                status = self._fail_status
            else:
                status = 401 if verified is False else 200
            self.requests.append(ReceivedRequest(method, path, headers, body, status, verified))
            return status


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status = receiver.answer(self.command, self.path, headers, body)
            reply = json.dumps({"status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_POST = do_PUT = do_GET = _serve  # noqa: N815 (http.server's names)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            pass

    return Handler


@pytest.fixture(scope="session")
def webhook_session() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(host=LOOPBACK, port=0)
    httpd = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(receiver))
    httpd.daemon_threads = True
    receiver.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def webhook_receiver(webhook_session: WebhookReceiver) -> WebhookReceiver:
    webhook_session.reset()
    return webhook_session
