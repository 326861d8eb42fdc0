"""The bot process's small web server: `/healthz`, `/metrics` (Prometheus text) and `/v/<token>` links.

A download link is the only way to hand over a video too large for a chat. Its token is
`<job id>.<role>.<expiry>.<signature>`, the signature an HMAC-SHA256 over the first three parts with
`DUET_LINK_SECRET`: a link cannot be forged, altered to another job or file, or used after it expires, and
the server keeps no state to check it. Files are served from the media store by role only (no path in the
token), so a link can never reach anything but a job's result.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from bot.delivery import DeliveryMetrics
from storage import admin
from storage.errors import MediaError
from storage.media import MediaStore
from storage.queue import JobQueue

log = logging.getLogger(__name__)

LINKABLE_ROLES = ("result", "result_fitted")


class BadLink(Exception):
    """A token that is malformed, forged, or expired."""


@dataclass(frozen=True)
class LinkSigner:
    secret: bytes
    public_base_url: str
    ttl_s: float
    clock: Callable[[], float] = time.time

    def _signature(self, payload: str) -> str:
        digest = hmac.new(self.secret, payload.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def token(self, job_id: str, role: str) -> str:
        if role not in LINKABLE_ROLES:
            raise ValueError(f"role {role!r} cannot be linked")
        payload = f"{job_id}.{role}.{int(self.clock() + self.ttl_s)}"
        return f"{payload}.{self._signature(payload)}"

    def url(self, job_id: str, role: str) -> str:
        return f"{self.public_base_url.rstrip('/')}/v/{self.token(job_id, role)}"

    def verify(self, token: str) -> tuple[str, str]:
        """(job id, role) of a valid, unexpired token; BadLink otherwise."""
        parts = token.split(".")
        if len(parts) != 4:
            raise BadLink("malformed")
        job_id, role, expiry, signature = parts
        if not hmac.compare_digest(self._signature(f"{job_id}.{role}.{expiry}"), signature):
            raise BadLink("bad signature")
        if role not in LINKABLE_ROLES or not expiry.isdigit():
            raise BadLink("malformed")
        if int(expiry) < self.clock():
            raise BadLink("expired")
        return job_id, role


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def render_metrics(queue: JobQueue, metrics: DeliveryMetrics) -> str:
    """Prometheus text exposition format 0.0.4."""
    stats = await admin.stats(queue)
    lines = [
        "# HELP duet_jobs Jobs in the queue database by state.",
        "# TYPE duet_jobs gauge",
    ]
    lines += [f'duet_jobs{{state="{_escape_label(state)}"}} {count}' for state, count in sorted(stats.counts.items())]
    lines += _summary("duet_queue_wait_seconds", "Time from submission to start over the last day.", stats.queue_wait)
    lines += _summary("duet_render_seconds", "Time from start to success over the last day.", stats.render_time)
    lines += [
        "# HELP duet_delivery_latency_seconds Time from a job's success to its video posted, this process.",
        "# TYPE duet_delivery_latency_seconds summary",
    ]
    lines += [f'duet_delivery_latency_seconds{{quantile="{q}"}} {v:.3f}' for q, v in metrics.latency_quantiles().items()]
    lines.append(f"duet_delivery_latency_seconds_count {len(metrics.latencies_s)}")
    lines += [
        "# HELP duet_deliveries_total Videos posted back to chats by this process.",
        "# TYPE duet_deliveries_total counter",
        f"duet_deliveries_total {metrics.delivered}",
        "# HELP duet_errors_total Errors of this process by kind.",
        "# TYPE duet_errors_total counter",
        f'duet_errors_total{{kind="delivery"}} {metrics.delivery_errors}',
        f'duet_errors_total{{kind="status_edit"}} {metrics.edit_errors}',
    ]
    return "\n".join(lines) + "\n"


def build_http_app(
    queue: JobQueue, media: MediaStore, metrics: DeliveryMetrics, signer: LinkSigner | None
) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        try:
            await queue.paused()  # one read: the database answers
        except Exception as exc:
            log.warning("health check failed", extra={"action": "healthz", "error": repr(exc)})
            return web.json_response({"status": "error", "database": "unreachable"}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics_page(request: web.Request) -> web.Response:
        body = await render_metrics(queue, metrics)
        headers = {"X-Content-Type-Options": "nosniff"}
        return web.Response(text=body, content_type="text/plain", charset="utf-8", headers=headers)

    async def download(request: web.Request) -> web.StreamResponse:
        if signer is None:
            raise web.HTTPNotFound()
        try:
            job_id, role = signer.verify(request.match_info["token"])
            path = media.path(job_id, role)
        except (BadLink, MediaError):
            raise web.HTTPNotFound() from None  # expired, forged and unknown look the same
        if not path.is_file():
            raise web.HTTPGone(text="This video has been deleted.")
        return web.FileResponse(
            path,
            headers={
                "Content-Type": "video/mp4",
                "Content-Disposition": f'attachment; filename="duet-{job_id[:8]}.mp4"',
                "Cache-Control": "private, no-store",
            },
        )

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/metrics", metrics_page), web.get("/v/{token}", download)])
    return app


def _summary(name: str, description: str, percentiles: admin.Percentiles) -> list[str]:
    """A Prometheus summary from `storage.admin.Percentiles`: p50/p95 when known, and the count."""
    lines = [f"# HELP {name} {description}", f"# TYPE {name} summary"]
    for quantile, value in (("0.5", percentiles.p50_s), ("0.95", percentiles.p95_s)):
        if value is not None:
            lines.append(f'{name}{{quantile="{quantile}"}} {value:.3f}')
    lines.append(f"{name}_count {percentiles.count}")
    return lines
