"""Notifications against real servers on loopback: aiosmtpd for e-mail, an http.server receiver for webhooks."""

from __future__ import annotations

import json
import time

import pytest

from spaceport.jobs.notify import (
    NotificationError,
    check_webhook_url,
    deliver_webhook,
    job_email,
    send_email,
    sign_payload,
    verify_signature,
    webhook_payload,
)
from spaceport.settings import Settings
from spaceport.workspace import SpaceportError
from tests.servers import free_port

SUCCEEDED = {
    "id": "job-7f3a",
    "state": "succeeded",
    "stage": "report",
    "error": None,
    "metrics": {"sfm": {"registered": 11, "total": 12}, "train": {"psnr": 24.318, "ssim": 0.8123,
                                                                    "num_gaussians": 412345, "ply_bytes": 98_700_000},
                "compress": {"sog_bytes": 6_500_000, "size_ratio": 15.18}, "quality_score": 81.25},
    "artifacts": [{"name": "scene.sog", "size": 6_500_000, "url": "/v1/jobs/job-7f3a/artifacts/scene.sog"},
                  {"name": "report.html", "size": 120_000, "url": "/v1/jobs/job-7f3a/artifacts/report.html"}],
}
FAILED = {"id": "job-9", "state": "failed", "stage": "sfm", "metrics": {},
          "error": "sfm: only 2 of 40 photos registered <check overlap>", "artifacts": []}
PUBLIC = "https://spaceport.example.org/"


def settings_for(**overrides) -> Settings:
    return Settings(public_url=PUBLIC, smtp_from="spaceport@example.org", **overrides)


# -- composing ----------------------------------------------------------------------------------------------------


def test_job_email_has_state_figures_and_artifact_links() -> None:
    subject, text, html = job_email(SUCCEEDED, settings_for())
    assert subject == "Spaceport job job-7f3a succeeded"
    for expected in ("Job job-7f3a: succeeded", "Registered photos: 11 / 12", "Held-out PSNR: 24.32 dB",
                     "Held-out SSIM: 0.812", "Gaussians: 412,345", "PLY size: 98.7 MB", "SOG size: 6.5 MB",
                     "Compression: 15.2x smaller", "Quality score: 81.2 / 100",
                     "scene.sog (6.5 MB): https://spaceport.example.org/v1/jobs/job-7f3a/artifacts/scene.sog",
                     "report.html (120.0 KB): https://spaceport.example.org/v1/jobs/job-7f3a/artifacts/report.html",
                     "Job: https://spaceport.example.org/v1/jobs/job-7f3a"):
        assert expected in text
    assert '<a href="https://spaceport.example.org/v1/jobs/job-7f3a/artifacts/scene.sog">scene.sog</a>' in html


def test_failure_email_names_the_stage_and_escapes_the_error() -> None:
    subject, text, html = job_email(FAILED, settings_for())
    assert subject == "Spaceport job job-9 failed at sfm"
    assert "Error: sfm: only 2 of 40 photos registered <check overlap>" in text
    assert "&lt;check overlap&gt;" in html and "<check overlap>" not in html


# -- sending ------------------------------------------------------------------------------------------------------


def test_email_reaches_the_smtp_server(smtp_server) -> None:
    settings = settings_for(**smtp_server.settings_kwargs())
    subject, text, html = job_email(SUCCEEDED, settings)
    assert send_email(settings, "crew@example.org", subject, text, html) is True

    [mail] = smtp_server.messages
    assert mail.rcpt_tos == ["crew@example.org"]
    assert mail.mail_from == "spaceport@example.org"
    assert mail.message["Subject"] == "Spaceport job job-7f3a succeeded"
    assert mail.message["To"] == "crew@example.org"
    assert "https://spaceport.example.org/v1/jobs/job-7f3a/artifacts/scene.sog" in mail.text()
    assert 'href="https://spaceport.example.org/v1/jobs/job-7f3a/artifacts/report.html"' in mail.html()
    assert not mail.tls and mail.login is None


def test_email_over_starttls_with_login(smtp_tls_server) -> None:
    settings = settings_for(**smtp_tls_server.settings_kwargs())
    assert settings.smtp_starttls and settings.smtp_username == "testing"
    subject, text, html = job_email(FAILED, settings)
    assert send_email(settings, "ops@example.org", subject, text, html,
                      ssl_context=smtp_tls_server.client_context())
    [mail] = smtp_tls_server.messages
    assert mail.tls and mail.login == "testing"
    assert mail.message["Subject"] == "Spaceport job job-9 failed at sfm"


def test_email_failures_name_the_setting_to_fix(smtp_tls_server) -> None:
    plain = settings_for(smtp_host=smtp_tls_server.host, smtp_port=smtp_tls_server.port)
    with pytest.raises(NotificationError, match="SPACEPORT_SMTP_STARTTLS"):
        send_email(plain, "ops@example.org", "s", "t")
    wrong = settings_for(**{**smtp_tls_server.settings_kwargs(), "smtp_password": "wrong"})
    with pytest.raises(NotificationError, match="refused the login of 'testing'.*SPACEPORT_SMTP_PASSWORD"):
        send_email(wrong, "ops@example.org", "s", "t", ssl_context=smtp_tls_server.client_context())
    untrusted = settings_for(**smtp_tls_server.settings_kwargs())
    with pytest.raises(NotificationError, match="CERTIFICATE_VERIFY_FAILED"):
        send_email(untrusted, "ops@example.org", "s", "t")  # the self-signed certificate is not in the system CAs
    nobody = settings_for(smtp_host="127.0.0.1", smtp_port=free_port())
    with pytest.raises(NotificationError, match=r"through 127\.0\.0\.1:\d+ failed") as info:
        send_email(nobody, "ops@example.org", "s", "t")
    assert isinstance(info.value, SpaceportError)
    assert smtp_tls_server.messages == []


def test_no_smtp_host_sends_nothing() -> None:
    assert send_email(settings_for(smtp_host=None), "x@example.org", "s", "t") is False


# -- signatures ---------------------------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign_payload("k", 1_700_000_000, body) == f"sha256={expected}"


def test_verify_signature_rejects_tampering_and_replay() -> None:
    body, now = b'{"job": "x"}', 1_700_000_000
    signature = sign_payload("secret", now, body)
    assert verify_signature("secret", str(now), signature, body, now=now + 299)
    assert not verify_signature("secret", str(now), signature, body, now=now + 301)  # replayed later
    assert not verify_signature("secret", str(now), signature, body, now=now - 301)  # from the future
    assert not verify_signature("secret", str(now), signature, body + b" ", now=now)
    assert not verify_signature("other", str(now), signature, body, now=now)
    assert not verify_signature("secret", str(now + 1), signature, body, now=now)  # timestamp is signed
    assert not verify_signature("secret", "yesterday", signature, body, now=now)
    assert not verify_signature("secret", None, signature, body, now=now)
    assert not verify_signature("", str(now), signature, body, now=now)


def test_check_webhook_url() -> None:
    assert check_webhook_url("https://hooks.example.org/x") == "https://hooks.example.org/x"
    for bad in ("ftp://x/y", "file:///etc/passwd", "http://", "hooks.example.org"):
        with pytest.raises(SpaceportError, match="webhook_url"):
            check_webhook_url(bad)


# -- delivering -----------------------------------------------------------------------------------------------------


def test_signed_webhook_is_verified_by_the_receiver(webhook_receiver) -> None:
    webhook_receiver.secret = "hook-secret"
    payload = webhook_payload(SUCCEEDED, settings_for())
    records: list[dict] = []
    assert deliver_webhook(webhook_receiver.url, payload, "hook-secret", record=records.append)

    [request] = webhook_receiver.requests
    assert request.verified is True and request.status == 200
    assert request.headers["content-type"] == "application/json"
    assert abs(int(request.headers["x-spaceport-timestamp"]) - time.time()) < 600
    assert request.json() == json.loads(json.dumps(payload))
    assert request.json()["event"] == "job.succeeded"
    assert request.json()["job"]["artifacts"][0]["url"] == (
        "https://spaceport.example.org/v1/jobs/job-7f3a/artifacts/scene.sog")
    assert records == [{"attempt": 1, "url": webhook_receiver.url, "ok": True, "status_code": 200}]


def test_wrong_secret_is_refused_and_not_retried(webhook_receiver) -> None:
    webhook_receiver.secret = "hook-secret"
    records: list[dict] = []
    assert not deliver_webhook(webhook_receiver.url, {"x": 1}, "guessed", record=records.append, backoff_s=(0,))
    assert [r.verified for r in webhook_receiver.requests] == [False]
    assert records == [{"attempt": 1, "url": webhook_receiver.url, "ok": False, "status_code": 401}]


def test_receiver_failing_twice_gets_it_on_the_third_try(webhook_receiver) -> None:
    webhook_receiver.secret = "s"
    webhook_receiver.fail_next(2)
    records: list[dict] = []
    waits: list[float] = []
    assert deliver_webhook(webhook_receiver.url, {"x": 1}, "s", record=records.append, sleep=waits.append)
    assert [r["status_code"] for r in records] == [500, 500, 200]
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert [r["ok"] for r in records] == [False, False, True]
    assert waits == [1, 4]  # the default backoff, without waiting for it
    assert [r.status for r in webhook_receiver.requests] == [500, 500, 200]
    assert all(r.verified for r in webhook_receiver.requests)


def test_receiver_failing_always_gives_false_after_three_tries(webhook_receiver) -> None:
    webhook_receiver.fail_next(1000, status=503)
    records: list[dict] = []
    assert not deliver_webhook(webhook_receiver.url, {"x": 1}, "s", record=records.append, backoff_s=(0.01, 0.02))
    assert [r["status_code"] for r in records] == [503, 503, 503]
    assert len(webhook_receiver.requests) == 3


def test_rate_limited_then_accepted(webhook_receiver) -> None:
    webhook_receiver.fail_next(1, status=429)
    records: list[dict] = []
    assert deliver_webhook(webhook_receiver.url, {"x": 1}, None, record=records.append, backoff_s=(0,))
    assert [r["status_code"] for r in records] == [429, 200]
    assert "x-spaceport-signature" not in webhook_receiver.requests[-1].headers  # no secret: unsigned


def test_unreachable_receiver_is_retried_and_recorded() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    records: list[dict] = []
    assert not deliver_webhook(url, {"x": 1}, "s", record=records.append, backoff_s=(0,), timeout_s=2)
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert all(r["ok"] is False and r["error"].startswith("ConnectError") for r in records)


def test_a_webhook_url_that_is_not_http_is_recorded_not_sent() -> None:
    records: list[dict] = []
    assert not deliver_webhook("file:///etc/passwd", {"x": 1}, "s", record=records.append, backoff_s=(0,))
    assert len(records) == 1 and records[0]["ok"] is False and "http:// or https://" in records[0]["error"]
