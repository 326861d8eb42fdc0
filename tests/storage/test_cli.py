"""`duet queue …` and `duet script parse`: every command, its --json shape, and bad usage (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "bot" / "samples"


@pytest.fixture
def cli(db_url, tmp_path):
    config = tmp_path / "duet.toml"
    config.write_text(
        f'[storage]\ndatabase_url = "{db_url}"\nmedia_dir = "{tmp_path / "media"}"\n'
        "[queue]\nmax_active_per_user = 10\n"
    )
    runner = CliRunner()

    def run(*args: str, code: int = 0, stdin: str | None = None):
        result = runner.invoke(main, ["--config", str(config), *args], input=stdin, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    run.media = tmp_path / "media"
    return run


def submit(cli, *extra: str) -> str:
    result = cli(
        "queue", "submit",
        "--photo-a", str(SAMPLES / "grace_hopper.jpg"),
        "--photo-b", str(SAMPLES / "astronaut.png"),
        "--script", str(SAMPLES / "script.txt"),
        *extra,
    )
    return result.output.strip()


def as_json(result):
    return json.loads(result.output)


def test_submit_list_show_cancel_retry_round_trip(cli):
    job_id = submit(cli, "--seed", "7", "--quality", "480p", "--scene", "a bright studio")
    assert sorted(p.name for p in (cli.media / job_id).iterdir()) == ["frame.png", "photo_a.png", "photo_b.png", "preview.png"]

    listed = as_json(cli("queue", "list", "--json"))
    assert [job["id"] for job in listed] == [job_id] and listed[0]["state"] == "queued"
    assert set(listed[0]) >= {"id", "state", "owner", "platform", "stage", "progress", "attempts", "created_at"}

    shown = as_json(cli("queue", "show", job_id, "--json"))
    assert shown["spec"]["render"]["seed"] == 7 and shown["spec"]["render"]["quality"] == "480p"
    assert shown["spec"]["inputs"]["scene"] == "a bright studio"
    assert shown["queue_position"] == 1 and [e["kind"] for e in shown["events"]] == ["submitted"]
    assert "History" in cli("queue", "show", job_id).output

    assert as_json(cli("queue", "cancel", job_id, "--json")) == {"id": job_id, "state": "cancelled", "cancel_requested": False}
    assert as_json(cli("queue", "retry", job_id, "--json"))["state"] == "queued"
    assert as_json(cli("queue", "list", "--state", "queued", "--json"))[0]["id"] == job_id
    assert as_json(cli("queue", "list", "--state", "failed", "--json")) == []


def test_submit_json_and_refused_input(cli, tmp_path):
    result = cli(
        "queue", "submit", "--json",
        "--photo-a", str(SAMPLES / "grace_hopper.jpg"),
        "--photo-b", str(SAMPLES / "astronaut.png"),
        "--script", str(SAMPLES / "script.txt"),
    )
    body = as_json(result)
    assert body["state"] == "queued" and body["voices"] == {"A": "af_heart", "B": "am_adam"}
    one_speaker = tmp_path / "one.txt"
    one_speaker.write_text("A: Hello\nA: Anyone there?\n")
    refused = cli(
        "queue", "submit",
        "--photo-a", str(SAMPLES / "grace_hopper.jpg"),
        "--photo-b", str(SAMPLES / "astronaut.png"),
        "--script", str(one_speaker),
        code=1,
    )
    assert "Error:" in refused.output and "B" in refused.output
    not_a_photo = tmp_path / "photo.jpg"
    not_a_photo.write_bytes(b"%PDF-1.4 not really a photo")
    refused = cli(
        "queue", "submit",
        "--photo-a", str(not_a_photo),
        "--photo-b", str(SAMPLES / "astronaut.png"),
        "--script", str(SAMPLES / "script.txt"),
        code=1,
    )
    assert "PDF" in refused.output
    assert len(as_json(cli("queue", "list", "--json"))) == 1  # refusals queue nothing


def test_pause_resume_stats_watch_workers_users_purge(cli):
    assert as_json(cli("queue", "pause", "--intake", "--json")) == {"paused": {"intake": True, "claims": False}}
    refused = cli(
        "queue", "submit",
        "--photo-a", str(SAMPLES / "grace_hopper.jpg"),
        "--photo-b", str(SAMPLES / "astronaut.png"),
        "--script", str(SAMPLES / "script.txt"),
        code=1,
    )
    assert "not taking new videos" in refused.output
    assert as_json(cli("queue", "resume", "--json")) == {"paused": {"intake": False, "claims": False}}
    assert as_json(cli("queue", "pause", "--json")) == {"paused": {"intake": True, "claims": True}}
    cli("queue", "resume")
    job_id = submit(cli)

    stats = as_json(cli("queue", "stats", "--json"))
    assert stats["counts"]["queued"] == 1 and set(stats) >= {"queue_wait", "render_time", "succeeded_last_hour"}
    assert "queue wait" in cli("queue", "stats").output

    lines = cli("queue", "watch", "--json", "--iterations", "2", "--interval", "0.1").output.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["active"] == [job_id]

    assert as_json(cli("queue", "workers", "--json")) == []
    assert "0 worker(s)" in cli("queue", "workers").output

    users = as_json(cli("queue", "users", "--quota", "cli:someone", "3", "--json"))
    assert {"owner_key": "cli:someone", "max_active": 3}.items() <= next(u for u in users if u["owner_key"] == "cli:someone").items()
    users = as_json(cli("queue", "users", "--block", "cli:someone", "--json"))
    assert next(u for u in users if u["owner_key"] == "cli:someone")["blocked"] is True

    janitor = as_json(cli("queue", "janitor", "--json"))
    assert janitor == {"reaped": [], "removed": {"inputs": 0, "results": 0, "jobs": 0, "orphans": 0}}
    assert "reaped 0 lease(s)" in cli("queue", "janitor").output

    cli("queue", "cancel", job_id)
    assert as_json(cli("queue", "purge", "--older-than", "0s", "--yes", "--json")) == {"purged": [job_id]}
    assert not (cli.media / job_id).exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("queue", "list", "--state", "nope"), "Invalid value"),
        (("queue", "list", "--limit", "0"), "Invalid value"),
        (("queue", "purge", "--older-than", "7 parsecs", "--yes"), "duration"),
        (("queue", "purge", "--older-than", "7d"), "--yes"),
        (("queue", "users", "--quota", "cli:x", "lots"), "number"),
        (("queue", "show"), "Missing argument"),
        (("queue", "submit", "--photo-a", "/nonexistent.jpg"), "No such file"),
        (("queue", "frobnicate"), "No such command"),
        (("queue", "stats", "--window", "soon"), "duration"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(cli, args, needle):
    result = cli(*args, code=2)
    assert needle in result.output


def test_not_found_exits_1(cli):
    for command in ("show", "cancel", "retry"):
        assert "No job" in cli("queue", command, "no-such-job", code=1).output


def test_bad_config_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[queue]\nmax_queud = 3\n")
    result = CliRunner().invoke(main, ["--config", str(config), "queue", "list"])
    assert result.exit_code == 2 and "[queue] max_queud: unknown key" in result.output


def test_script_parse_json(tmp_path):
    script = tmp_path / "s.txt"
    script.write_text("(s1) Hi there. (s2) Hello! (laughs)\n(s1) Ready?\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["script", "parse", str(script), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == [
        {"speaker": "A", "text": "Hi there."},
        {"speaker": "B", "text": "Hello!"},
        {"speaker": "A", "text": "Ready?"},
    ]
    three = tmp_path / "three.txt"
    three.write_text("Alice: hi\nBob: hey\nCarol: yo\n")
    result = CliRunner().invoke(main, ["script", "parse", str(three)])
    assert result.exit_code == 1 and "Carol" in result.output
