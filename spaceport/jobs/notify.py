"""Telling people a job finished: e-mail through SMTP and signed webhooks.

E-mail: :func:`job_email` composes subject, text and HTML from a job summary (the API's job JSON:
``{"id", "state", "stage", "error", "metrics": {...}, "artifacts": [{"name", "size", "url"}]}``) and
:func:`send_email` sends it with the SMTP settings (host, port, STARTTLS, credentials).

Webhooks: :func:`deliver_webhook` POSTs JSON signed like this::

    X-Spaceport-Timestamp: <unix seconds>
    X-Spaceport-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>

A receiver recomputes the HMAC over the raw body with :func:`verify_signature`, which also refuses a timestamp
older (or newer) than five minutes, so a captured request cannot be replayed later. Each try is reported to a
``record`` callback so the caller can store it as a job event.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import smtplib
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from spaceport.settings import Settings
from spaceport.workspace import SpaceportError

SIGNATURE_HEADER = "X-Spaceport-Signature"
TIMESTAMP_HEADER = "X-Spaceport-Timestamp"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class NotificationError(SpaceportError):
    """An e-mail could not be handed to the SMTP server (the message says which server and why)."""


# -- e-mail -----------------------------------------------------------------------------------------------------


def send_email(settings: Settings, to: str, subject: str, body_text: str, body_html: str | None = None, *,
               ssl_context: ssl.SSLContext | None = None, timeout_s: float = 30.0) -> bool:
    """Send one e-mail through ``settings.smtp_host``; returns False (and sends nothing) when no host is set.

    STARTTLS is used when ``settings.smtp_starttls`` is true (verified against the system CAs, or
    ``ssl_context`` when given), then LOGIN with ``smtp_username`` / ``smtp_password`` when a username is set.
    Raises :class:`NotificationError` when the server refuses or cannot be reached.
    """
    if not settings.smtp_host:
        return False
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body_text)
    if body_html is not None:
        message.add_alternative(body_html, subtype="html")
    server = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout_s) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl_context or ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password or "")
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        raise NotificationError(f"e-mail to {to}: {server} refused the login of {settings.smtp_username!r} "
                                f"({exc.smtp_code}); check SPACEPORT_SMTP_USERNAME / SPACEPORT_SMTP_PASSWORD") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise NotificationError(f"e-mail to {to}: {server} does not support what was asked ({exc}); check "
                                "SPACEPORT_SMTP_STARTTLS and whether the server needs a login") from None
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        raise NotificationError(f"e-mail to {to} through {server} failed: {exc}; check SPACEPORT_SMTP_HOST / "
                                "SPACEPORT_SMTP_PORT / SPACEPORT_SMTP_STARTTLS") from None
    return True


def artifact_url(settings: Settings, job_id: str, name: str) -> str:
    """The public download link of one artifact: ``public_url/v1/jobs/{id}/artifacts/{name}``."""
    return f"{settings.public_url.rstrip('/')}/v1/jobs/{quote(str(job_id), safe='')}/artifacts/{quote(name, safe='')}"


def job_url(settings: Settings, job_id: str) -> str:
    return f"{settings.public_url.rstrip('/')}/v1/jobs/{quote(str(job_id), safe='')}"


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _find(flat: Mapping[str, Any], names: Iterable[str]) -> tuple[str, Any] | None:
    """The first metric whose last dotted part is one of ``names`` (metrics may be flat or grouped by stage)."""
    for wanted in names:
        for key, value in flat.items():
            if key.rsplit(".", 1)[-1] == wanted and value is not None:
                return key, value
    return None


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def job_figures(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows for the figures people look at, then any other scalar metric as ``key: value``."""
    flat = _flatten(metrics)
    used: set[str] = set()
    rows: list[tuple[str, str]] = []

    def take(names: Sequence[str]) -> Any:
        found = _find(flat, names)
        if found is None:
            return None
        used.add(found[0])
        return found[1]

    registered, total = take(("registered", "registered_images")), take(("total", "total_images", "images"))
    if registered is not None:
        rows.append(("Registered photos", f"{registered} / {total}" if total is not None else str(registered)))
    if (psnr := take(("psnr", "heldout_psnr", "test_psnr"))) is not None:
        rows.append(("Held-out PSNR", f"{float(psnr):.2f} dB"))
    if (ssim := take(("ssim", "heldout_ssim", "test_ssim"))) is not None:
        rows.append(("Held-out SSIM", f"{float(ssim):.3f}"))
    if (gaussians := take(("num_gaussians", "gaussians"))) is not None:
        rows.append(("Gaussians", f"{int(gaussians):,}"))
    if (ply_bytes := take(("ply_bytes",))) is not None:
        rows.append(("PLY size", human_bytes(ply_bytes)))
    if (sog_bytes := take(("sog_bytes",))) is not None:
        rows.append(("SOG size", human_bytes(sog_bytes)))
    if (ratio := take(("size_ratio",))) is not None:
        rows.append(("Compression", f"{float(ratio):.1f}x smaller"))
    if (score := take(("quality_score",))) is not None:
        rows.append(("Quality score", f"{float(score):.1f} / 100"))
    for key, value in flat.items():
        if key not in used and isinstance(value, (int, float, str, bool)) and len(rows) < 30:
            rows.append((key, str(value)))
    return rows


def job_email(job_summary: Mapping[str, Any], settings: Settings) -> tuple[str, str, str]:
    """(subject, text, html) of the mail sent when a job ends: state, failing stage and error, figures, and a
    download link per artifact."""
    job_id = str(job_summary["id"])
    state = str(job_summary.get("state") or "unknown")
    stage = job_summary.get("stage")
    error = job_summary.get("error")
    figures = job_figures(job_summary.get("metrics") or {})
    artifacts = [(str(a["name"]), a.get("size"), artifact_url(settings, job_id, str(a["name"])))
                 for a in job_summary.get("artifacts") or []]

    subject = f"Spaceport job {job_id} {state}"
    if state == "failed" and stage:
        subject += f" at {stage}"

    lines = [f"Job {job_id}: {state}"]
    if stage:
        lines.append(f"Stage: {stage}")
    if error:
        lines.append(f"Error: {error}")
    if figures:
        lines += ["", "Figures"] + [f"  {label}: {value}" for label, value in figures]
    if artifacts:
        lines += ["", "Artifacts"]
        lines += [f"  {name}{f' ({human_bytes(size)})' if size is not None else ''}: {url}"
                  for name, size, url in artifacts]
    lines += ["", f"Job: {job_url(settings, job_id)}", ""]
    text = "\n".join(lines)

    e = html.escape
    parts = [f"<h2>Spaceport job {e(job_id)}: {e(state)}</h2>"]
    if stage:
        parts.append(f"<p>Stage: <b>{e(str(stage))}</b></p>")
    if error:
        parts.append(f"<p>Error:</p><pre>{e(str(error))}</pre>")
    if figures:
        rows = "".join(f"<tr><td>{e(label)}</td><td>{e(value)}</td></tr>" for label, value in figures)
        parts.append(f"<h3>Figures</h3><table>{rows}</table>")
    if artifacts:
        items = "".join(f'<li><a href="{e(url)}">{e(name)}</a>'
                        f"{f' ({e(human_bytes(size))})' if size is not None else ''}</li>"
                        for name, size, url in artifacts)
        parts.append(f"<h3>Artifacts</h3><ul>{items}</ul>")
    parts.append(f'<p><a href="{e(job_url(settings, job_id))}">The job</a></p>')
    body_html = f"<!doctype html><html><body>{''.join(parts)}</body></html>"
    return subject, text, body_html


# -- webhooks ---------------------------------------------------------------------------------------------------


def sign_payload(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 with ``secret`` over ``f"{timestamp}."`` followed by the raw body."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp_header: str | None, signature_header: str | None, body: bytes,
                     tolerance_s: float = 300, now: float | None = None) -> bool:
    """True when the signature matches the body and timestamp, and the timestamp is within ``tolerance_s`` of
    ``now`` (default: the clock); a replayed old request, a missing header or a bad signature give False."""
    if not secret or not timestamp_header or not signature_header:
        return False
    try:
        timestamp = int(timestamp_header)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign_payload(secret, timestamp, body), signature_header.strip())


def webhook_headers(secret: str | None, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Content type, timestamp and (with a secret) signature headers for one delivery of ``body``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = {"Content-Type": "application/json", "User-Agent": "spaceport-webhook", TIMESTAMP_HEADER: str(stamp)}
    if secret:
        headers[SIGNATURE_HEADER] = sign_payload(secret, stamp, body)
    return headers


def check_webhook_url(url: str) -> str:
    """Raise :class:`SpaceportError` unless ``url`` is an absolute http(s) URL with a host; returns it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpaceportError(f"notify.webhook_url must be an absolute http:// or https:// URL; got {url[:200]}")
    return url


def webhook_payload(job_summary: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The JSON sent to a job's webhook: ``{"event": "job.<state>", "job": summary with absolute artifact URLs}``."""
    job = dict(job_summary)
    job["artifacts"] = [{**artifact, "url": artifact_url(settings, str(job["id"]), str(artifact["name"]))}
                        for artifact in job_summary.get("artifacts") or []]
    return {"event": f"job.{job.get('state')}", "sent_at": int(time.time()), "job": job}


def deliver_webhook(url: str, payload: Mapping[str, Any], secret: str | None, *, tries: int = 3,
                    backoff_s: Sequence[float] = (1, 4), timeout_s: float = 10,
                    record: Callable[[dict[str, Any]], None] | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> bool:
    """POST ``payload`` as signed JSON to ``url``; True once a try gets a 2xx answer.

    Connection errors, timeouts, 429 and 5xx are retried (``tries`` in all), waiting ``backoff_s[i]`` seconds
    before try ``i + 2`` (the last value repeats). Any other answer ends the delivery as failed. Each try is
    signed afresh (a new timestamp) and reported to ``record`` as ``{"attempt", "url", "ok", "status_code"}``
    or ``{"attempt", "url", "ok", "error"}``. Redirects are not followed. A URL that is not http(s) is recorded
    as one failed try, never sent.
    """
    try:
        check_webhook_url(url)
    except SpaceportError as exc:
        if record is not None:
            record({"attempt": 1, "url": url, "ok": False, "error": str(exc)})
        return False
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for attempt in range(1, tries + 1):
            if attempt > 1 and backoff_s:
                sleep(backoff_s[min(attempt - 2, len(backoff_s) - 1)])
            entry: dict[str, Any] = {"attempt": attempt, "url": url}
            try:
                response = client.post(url, content=body, headers=webhook_headers(secret, body))
            except httpx.HTTPError as exc:
                entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                retry = isinstance(exc, httpx.TransportError)
            else:
                ok = response.is_success
                entry.update(ok=ok, status_code=response.status_code)
                retry = response.status_code in RETRY_STATUS
            if record is not None:
                record(entry)
            if entry["ok"]:
                return True
            if not retry:
                return False
    return False
