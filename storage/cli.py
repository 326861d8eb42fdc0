"""`duet queue …`: the operators' view of the queue. Rich tables for people, `--json` for scripts.

Exit codes: 0 done, 1 not found or refused, 2 bad usage (click's own). Every command opens the database,
upgrades it if needed (idempotent), does one thing and closes it. `submit` is added by `bot.cli`, because it
must go through the same validation as the chat bots and `storage` does not import `bot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.table import Table

from storage import admin
from storage.contract import JobState
from storage.db import Database
from storage.errors import DuetError
from storage.media import MediaStore
from storage.migrate import upgrade
from storage.queue import JobQueue, JobRecord
from storage.settings import Settings, load_settings

T = TypeVar("T")
STATES = [state.value for state in JobState]
console = Console()


@dataclass(frozen=True)
class Services:
    settings: Settings
    queue: JobQueue
    media: MediaStore


async def open_services(settings: Settings) -> Services:
    db = Database(settings.storage.database_url, busy_timeout_ms=settings.storage.busy_timeout_ms)
    await upgrade(db)
    queue = JobQueue(db, settings.queue)
    media = MediaStore(settings.storage.media_dir, db, max_file_bytes=settings.storage.max_file_bytes)
    return Services(settings, queue, media)


def run_action(settings: Settings, action: Callable[[Services], Awaitable[T]]) -> T:
    """Run one async action against `settings`' database in an event loop of its own, for synchronous callers
    (command lines, the engine's supervisor, tests); the connections are closed before it returns."""

    async def main() -> T:
        services = await open_services(settings)
        try:
            return await action(services)
        finally:
            await services.queue.db.dispose()

    return asyncio.run(main())


def run_with_services(ctx: click.Context, action: Callable[[Services], Awaitable[T]]) -> T:
    """Run one async action against the configured database; DuetErrors become exit code 1."""
    try:
        return run_action(ctx.obj["settings"], action)
    except DuetError as exc:
        fail(exc.user_message)


def fail(message: str, code: int = 1):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '45s' → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 12h or 7d")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


class JobView(BaseModel):
    """The `--json` shape of a job."""

    id: str
    state: str
    owner: str
    platform: str
    stage: str | None
    progress: float
    progress_detail: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    error_detail: str | None
    delivery_state: str
    lease_owner: str | None

    @classmethod
    def of(cls, job: JobRecord) -> JobView:
        return cls(
            id=job.id,
            state=job.state,
            owner=job.owner_key,
            platform=job.platform,
            stage=job.stage,
            progress=job.progress,
            progress_detail=job.progress_detail,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=bool(job.cancel_requested),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error_user,
            error_detail=job.error_admin,
            delivery_state=job.delivery_state,
            lease_owner=job.lease_owner,
        )


def jobs_table(jobs: list[JobRecord], now: float) -> Table:
    table = Table(title=f"{len(jobs)} job(s)")
    for column in ("id", "state", "owner", "stage", "progress", "attempts", "age"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.id,
            job.state + (" (cancel requested)" if job.cancel_requested else ""),
            job.owner_key,
            job.stage or "-",
            f"{job.progress:.0%}" + (f" {job.progress_detail}" if job.progress_detail else ""),
            f"{job.attempts}/{job.max_attempts}",
            _age(now - job.created_at),
        )
    return table


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group("queue")
def queue_group() -> None:
    """Look after the job queue: list, inspect, cancel, retry, purge, pause, statistics."""


@queue_group.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--user", help="Only this user's jobs (owner key, e.g. telegram:123).")
@click.option("--platform", type=click.Choice(["discord", "telegram", "cli"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@click.pass_context
def list_command(ctx, states, user, platform, limit, as_json) -> None:
    """List jobs, newest first."""
    jobs = run_with_services(
        ctx, lambda s: s.queue.list_jobs(states=states, owner_key=user, platform=platform, limit=limit)
    )
    if as_json:
        emit_json([JobView.of(job).model_dump(mode="json") for job in jobs])
    else:
        console.print(jobs_table(jobs, time.time()))


@queue_group.command("show")
@click.argument("job_id")
@json_option
@click.pass_context
def show_command(ctx, job_id, as_json) -> None:
    """A job's spec, state and history."""

    async def action(services: Services):
        job = await services.queue.get(job_id)
        return job, await services.queue.events(job_id), await services.queue.queue_position(job_id)

    job, events, position = run_with_services(ctx, action)
    if as_json:
        view = JobView.of(job).model_dump(mode="json")
        view.update(
            spec=json.loads(job.spec_json),
            result=json.loads(job.result_json) if job.result_json else None,
            queue_position=position,
            events=[asdict(event) for event in events],
        )
        emit_json(view)
        return
    console.print(jobs_table([job], time.time()))
    if position is not None:
        console.print(f"Queue position: {position}")
    if job.error_user:
        console.print(f"[red]Error:[/red] {job.error_user}  [dim]({job.error_admin})[/dim]")
    spec = job.spec
    for line in spec.inputs.dialogue:
        console.print(f"  [bold]{line.speaker}[/bold]: {line.text}")
    timeline = Table(title="History")
    for column in ("at", "event", "actor", "detail"):
        timeline.add_column(column)
    for event in events:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.at))
        timeline.add_row(at, event.kind, event.actor or "-", event.detail or "-")
    console.print(timeline)


@queue_group.command("cancel")
@click.argument("job_id")
@json_option
@click.pass_context
def cancel_command(ctx, job_id, as_json) -> None:
    """Cancel a job: queued jobs stop at once, running ones at the next step."""
    state = run_with_services(ctx, lambda s: s.queue.cancel(job_id, actor="admin:cli", is_admin=True))
    if as_json:
        emit_json({"id": job_id, "state": state.value, "cancel_requested": state == JobState.RUNNING})
    else:
        click.echo(f"{job_id}: {'cancel requested' if state == JobState.RUNNING else 'cancelled'}")


@queue_group.command("retry")
@click.argument("job_id")
@json_option
@click.pass_context
def retry_command(ctx, job_id, as_json) -> None:
    """Put a failed, dead or cancelled job back in the queue."""
    run_with_services(ctx, lambda s: s.queue.retry(job_id, actor="admin:cli"))
    if as_json:
        emit_json({"id": job_id, "state": "queued"})
    else:
        click.echo(f"{job_id}: queued again")


@queue_group.command("purge")
@click.option("--older-than", required=True, help="Age of the last change, e.g. 7d, 12h.")
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in JobState if s.is_terminal]))
@click.option("--yes", is_flag=True, help="Really delete (rows, history and files).")
@json_option
@click.pass_context
def purge_command(ctx, older_than, states, yes, as_json) -> None:
    """Delete finished jobs with their files. Active jobs are never purged."""
    seconds = parse_duration(older_than)
    if not yes:
        raise click.UsageError("purge deletes jobs and their files: add --yes to confirm")
    kwargs = {"states": states} if states else {}
    removed = run_with_services(ctx, lambda s: admin.purge(s.queue, s.media, older_than_s=seconds, **kwargs))
    if as_json:
        emit_json({"purged": removed})
    else:
        click.echo(f"purged {len(removed)} job(s)")


@queue_group.command("janitor")
@click.option("--reap/--no-reap", default=True, show_default=True, help="Also requeue expired leases.")
@json_option
@click.pass_context
def janitor_command(ctx, reap, as_json) -> None:
    """Apply retention (inputs, results, old jobs, orphan files) and reap expired leases — for cron."""

    async def action(services: Services):
        reaped = await services.queue.reap() if reap else []
        removed = await admin.enforce_retention(services.queue, services.media)
        return {"reaped": [job_id for job_id, _ in reaped], "removed": removed}

    result = run_with_services(ctx, action)
    if as_json:
        emit_json(result)
    else:
        removed = result["removed"]
        click.echo(
            f"reaped {len(result['reaped'])} lease(s); removed inputs of {removed['inputs']} job(s), "
            f"results of {removed['results']}, {removed['jobs']} old job(s), {removed['orphans']} orphan dir(s)"
        )


def _pause_switches(intake: bool, claims: bool) -> tuple[bool, bool]:
    return (True, True) if not (intake or claims) else (intake, claims)


@queue_group.command("pause")
@click.option("--intake", is_flag=True, help="Stop accepting new jobs.")
@click.option("--claims", is_flag=True, help="Stop engines from starting jobs.")
@click.option("--reason", default=None)
@json_option
@click.pass_context
def pause_command(ctx, intake, claims, reason, as_json) -> None:
    """Pause intake and/or claiming (both when neither is named)."""
    intake, claims = _pause_switches(intake, claims)
    _set_paused(ctx, intake=True if intake else None, claims=True if claims else None, reason=reason, as_json=as_json)


@queue_group.command("resume")
@click.option("--intake", is_flag=True)
@click.option("--claims", is_flag=True)
@json_option
@click.pass_context
def resume_command(ctx, intake, claims, as_json) -> None:
    """Resume intake and/or claiming (both when neither is named)."""
    intake, claims = _pause_switches(intake, claims)
    _set_paused(ctx, intake=False if intake else None, claims=False if claims else None, reason=None, as_json=as_json)


def _set_paused(ctx, *, intake, claims, reason, as_json) -> None:
    async def action(services: Services):
        await services.queue.set_paused(intake=intake, claims=claims, reason=reason)
        return await services.queue.paused()

    paused = run_with_services(ctx, action)
    if as_json:
        emit_json({"paused": paused})
    else:
        click.echo(f"intake: {'paused' if paused['intake'] else 'open'}, claims: {'paused' if paused['claims'] else 'open'}")


@queue_group.command("stats")
@click.option("--window", default="24h", show_default=True, help="Period for times and throughput.")
@json_option
@click.pass_context
def stats_command(ctx, window, as_json) -> None:
    """Jobs per state, queue wait and render time (p50/p95), throughput."""
    window_s = parse_duration(window)
    result = run_with_services(ctx, lambda s: admin.stats(s.queue, window_s=window_s))
    if as_json:
        emit_json(asdict(result))
        return
    console.print(stats_table(result))


def stats_table(result: admin.QueueStats) -> Table:
    table = Table(title=f"Queue (last {_age(result.window_s)})")
    table.add_column("metric")
    table.add_column("value")
    for state, count in result.counts.items():
        table.add_row(state, str(count))
    for name, value in (("queue wait", result.queue_wait), ("render time", result.render_time)):
        table.add_row(f"{name} p50 / p95", f"{_age(value.p50_s)} / {_age(value.p95_s)} (n={value.count})")
    table.add_row("succeeded last hour / window", f"{result.succeeded_last_hour} / {result.succeeded_last_day}")
    return table


@queue_group.command("watch")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600))
@click.option("--iterations", default=0, type=click.IntRange(0), help="Stop after N refreshes (0: never).")
@json_option
@click.pass_context
def watch_command(ctx, interval, iterations, as_json) -> None:
    """A live view of the queue (JSON: one line per refresh)."""

    async def action(services: Services) -> None:
        count = 0
        with contextlib.nullcontext() if as_json else Live(console=console, auto_refresh=False) as live:
            while True:
                result = await admin.stats(services.queue, window_s=3600)
                active = await services.queue.list_jobs(states=("running", "queued"), limit=20)
                if as_json:
                    click.echo(json.dumps({"at": time.time(), "counts": result.counts, "active": [j.id for j in active]}))
                else:
                    grid = Table.grid()
                    grid.add_row(stats_table(result))
                    grid.add_row(jobs_table(active, time.time()))
                    live.update(grid, refresh=True)
                count += 1
                if iterations and count >= iterations:
                    return
                await asyncio.sleep(interval)

    try:
        run_with_services(ctx, action)
    except KeyboardInterrupt:
        pass


@queue_group.command("workers")
@click.option("--drain", "drain", default=None, help="Ask this worker ('all' for every one) to finish its job and stop.")
@json_option
@click.pass_context
def workers_command(ctx, drain, as_json) -> None:
    """Engines serving the queue, their heartbeat and current job."""

    async def action(services: Services):
        if drain:
            await admin.request_drain(services.queue, None if drain == "all" else drain)
        return await admin.list_workers(services.queue)

    workers = run_with_services(ctx, action)
    if as_json:
        emit_json(workers)
        return
    table = Table(title=f"{len(workers)} worker(s)")
    for column in ("id", "host", "pid", "gpus", "state", "job", "heartbeat", "drain"):
        table.add_column(column)
    for w in workers:
        table.add_row(
            w["id"], w["host"], str(w["pid"]), str(w["world_size"]), w["state"], w["current_job_id"] or "-",
            f"{w['heartbeat_age_s']}s ago", "yes" if w["drain_requested"] else "",
        )
    console.print(table)


@queue_group.command("users")
@click.option("--block", "block", metavar="OWNER", help="Block a user (their queued jobs are cancelled).")
@click.option("--unblock", "unblock", metavar="OWNER")
@click.option("--quota", nargs=2, metavar="OWNER N", help="Set a user's active-job limit (N=default to reset).")
@json_option
@click.pass_context
def users_command(ctx, block, unblock, quota, as_json) -> None:
    """List users; block, unblock, or set a quota (owner keys look like telegram:123)."""
    if quota:
        owner, value = quota
        if value != "default" and not value.isdigit():
            raise click.BadParameter("N must be a number or 'default'", param_hint="--quota")

    async def action(services: Services):
        if block:
            await admin.set_user(services.queue, block, blocked=True)
        if unblock:
            await admin.set_user(services.queue, unblock, blocked=False)
        if quota:
            owner, value = quota
            if value == "default":
                await admin.set_user(services.queue, owner, clear_quota=True)
            else:
                await admin.set_user(services.queue, owner, max_active=int(value))
        return await admin.list_users(services.queue)

    users = run_with_services(ctx, action)
    if as_json:
        emit_json(users)
        return
    table = Table(title=f"{len(users)} user(s)")
    for column in ("owner", "blocked", "quota", "active", "total", "consent"):
        table.add_column(column)
    for u in users:
        table.add_row(
            u["owner_key"], "yes" if u["blocked"] else "", str(u["max_active"] or "default"),
            str(u["active_jobs"]), str(u["total_jobs"]), "yes" if u["consent"] else "",
        )
    console.print(table)


def settings_from(config_path: str | None) -> Settings:
    try:
        return load_settings(config_path)
    except DuetError as exc:
        fail(exc.user_message, code=2)
