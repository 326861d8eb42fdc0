"""The bots' web server: health, Prometheus metrics, and signed download links that cannot be forged,
altered or used after they expire."""

from __future__ import annotations

import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer
from chat_helpers import make_mp4, open_service

from bot.delivery import DeliveryMetrics
from bot.http import BadLink, LinkSigner, build_http_app
from storage.settings import Settings

JOB = str(uuid.uuid4())


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_signed_token_round_trips_and_nothing_else_does() -> None:
    clock = Clock()
    signer = LinkSigner(b"secret", "https://duet.example/", ttl_s=3600, clock=clock)
    token = signer.token(JOB, "result")
    assert signer.verify(token) == (JOB, "result")
    assert signer.url(JOB, "result") == f"https://duet.example/v/{token}"
    job, role, expiry, signature = token.split(".")
    other = str(uuid.uuid4())
    for forged in (
        f"{other}.{role}.{expiry}.{signature}",  # another job
        f"{job}.result_fitted.{expiry}.{signature}",  # another file
        f"{job}.{role}.{int(expiry) + 3600}.{signature}",  # a longer life
        f"{job}.{role}.{expiry}.{signature[:-2]}AA",
        LinkSigner(b"other secret", "x", 3600, clock=clock).token(JOB, "result"),
        "../../etc/passwd",
        "",
    ):
        with pytest.raises(BadLink):
            signer.verify(forged)
    clock.now += 3601
    with pytest.raises(BadLink, match="expired"):
        signer.verify(token)
    with pytest.raises(ValueError):
        signer.token(JOB, "photo_a")  # inputs can never be linked


@pytest.fixture
async def service(tmp_path):
    service = await open_service(tmp_path, Settings())
    yield service
    await service.queue.db.dispose()


async def test_download_serves_the_result_and_refuses_bad_links(service) -> None:
    mp4 = make_mp4(0.5)
    await service.media.put(JOB, "result", mp4)
    clock = Clock()
    signer = LinkSigner(b"secret", "http://x", ttl_s=60, clock=clock)
    app = build_http_app(service.queue, service.media, DeliveryMetrics(), signer)
    async with TestClient(TestServer(app)) as client:
        good = await client.get(f"/v/{signer.token(JOB, 'result')}")
        assert good.status == 200 and await good.read() == mp4
        assert good.headers["Content-Type"] == "video/mp4"
        assert "attachment" in good.headers["Content-Disposition"]
        missing = await client.get(f"/v/{signer.token(JOB, 'result_fitted')}")
        assert missing.status == 410
        assert (await client.get(f"/v/{signer.token(JOB, 'result')}x")).status == 404
        assert (await client.get("/v/..%2F..%2Fduet.db")).status == 404
        stale = signer.token(JOB, "result")
        clock.now += 61
        assert (await client.get(f"/v/{stale}")).status == 404


async def test_healthz_and_metrics(service) -> None:
    metrics = DeliveryMetrics(delivered=3, delivery_errors=1, edit_errors=2)
    metrics.latencies_s.extend([1.0, 2.0, 3.0])
    app = build_http_app(service.queue, service.media, metrics, None)
    async with TestClient(TestServer(app)) as client:
        health = await client.get("/healthz")
        assert health.status == 200 and (await health.json()) == {"status": "ok"}
        page = await client.get("/metrics")
        body = await page.text()
        assert (await client.get(f"/v/{JOB}.result.1.x")).status == 404, "no secret: no links at all"
    assert page.headers["Content-Type"].startswith("text/plain")
    lines = body.splitlines()
    for state in ("queued", "running", "succeeded", "failed", "cancelled", "dead"):
        assert f'duet_jobs{{state="{state}"}} 0' in lines
    assert "# TYPE duet_jobs gauge" in lines
    assert 'duet_delivery_latency_seconds{quantile="0.5"} 2.000' in lines
    assert "duet_delivery_latency_seconds_count 3" in lines
    assert "duet_deliveries_total 3" in lines
    assert 'duet_errors_total{kind="delivery"} 1' in lines and 'duet_errors_total{kind="status_edit"} 2' in lines
    assert all(line.startswith("#") or line.startswith("duet_") for line in lines)
