"""The fake Discord proven with the real discord.py 2.7: a minimal app-command bot runs against it
and the tests assert on the REST calls the fake recorded."""

from __future__ import annotations

import asyncio
import io

import discord
import pytest
from discord import app_commands
from fakes.discord_server import (
    ROUTE_CALLBACK,
    ROUTE_CREATE_MESSAGE,
    ROUTE_EDIT_MESSAGE,
    ROUTE_EDIT_ORIGINAL,
    ROUTE_FOLLOWUP,
    ROUTE_GUILD_COMMANDS,
    ROUTE_TYPING,
    FakeDiscord,
)
from fakes.fixtures import fake_discord, running_discord_client  # noqa: F401
from fakes.recording import wait_until

PHOTO = b"\x89PNG\r\n\x1a\nnot-really-a-png-but-bytes-are-bytes"
RESULT = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4


class PressView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Press", custom_id="proof:press")
    async def press(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"Pressed by {interaction.user.name}", view=None)

    @discord.ui.select(
        custom_id="proof:voice", options=[discord.SelectOption(label=v, value=v) for v in ("af_heart", "am_adam")]
    )
    async def voice(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        await interaction.response.edit_message(content=f"Voice {select.values[0]}")


class JobCancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"proof:job:(?P<job>[0-9]+):cancel"):
    """A per-job button rebuilt from its custom_id, so it keeps working after a restart."""

    def __init__(self, job: int) -> None:
        super().__init__(discord.ui.Button(label="Cancel", custom_id=f"proof:job:{job}:cancel"))
        self.job = job

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> JobCancelButton:  # type: ignore[no-untyped-def]
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content=f"Job {self.job} cancelled", view=None)


class ScriptModal(discord.ui.Modal, title="Dialogue script"):
    script = discord.ui.TextInput(
        label="Script", custom_id="proof:script", style=discord.TextStyle.long, max_length=4000
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ProofBot)
        interaction.client.submitted_scripts.append(self.script.value)
        await interaction.response.send_message(f"Got {len(self.script.value.splitlines())} lines", ephemeral=True)


class ProofBot(discord.Client):
    """The smallest bot with the shapes Duet needs: an attachment command, a button, a modal."""

    def __init__(self, guild_id: str, *, sync_globally: bool = False) -> None:
        super().__init__(intents=discord.Intents.default())
        self.sync_globally = sync_globally
        self.tree = app_commands.CommandTree(self)
        self.dev_guild = discord.Object(int(guild_id))
        self.downloads: list[bytes] = []
        self.submitted_scripts: list[str] = []
        self.fetched: list[str] = []
        self.errors: list[BaseException] = []
        self.release_slow = asyncio.Event()
        self.tree.error(self._record_error)
        for command in (talk, menu, script, job, slow, status):
            self.tree.add_command(command)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(JobCancelButton)
        if self.sync_globally:
            await self.tree.sync()
        else:
            self.tree.copy_global_to(guild=self.dev_guild)
            await self.tree.sync(guild=self.dev_guild)

    async def _record_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.errors.append(error.__cause__ or error)


@app_commands.command(description="Two photos in, a video out (one photo here).")
async def talk(interaction: discord.Interaction, photo: discord.Attachment, line: str) -> None:
    await interaction.response.defer(thinking=True)
    assert isinstance(interaction.client, ProofBot) and interaction.channel is not None
    async with interaction.channel.typing():
        interaction.client.downloads.append(await photo.read())
    await interaction.edit_original_response(
        content=f"Queued {photo.filename}: {line}", attachments=[discord.File(io.BytesIO(b"preview"), "preview.png")]
    )
    await interaction.channel.send(
        f"<@{interaction.user.id}> your video", file=discord.File(io.BytesIO(RESULT), "result.mp4")
    )


@app_commands.command(description="Shows a button.")
async def menu(interaction: discord.Interaction) -> None:
    await interaction.response.send_message(
        "Pick one", view=PressView(), file=discord.File(io.BytesIO(b"card"), "card.png")
    )


@app_commands.command(description="Asks for a script in a modal.")
async def script(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(ScriptModal())


@app_commands.command(description="Shows a job with a restart-proof Cancel button.")
async def job(interaction: discord.Interaction, voice: str) -> None:
    view = discord.ui.View(timeout=None)
    view.add_item(JobCancelButton(42))
    await interaction.response.send_message(f"Job 42 with {voice}", view=view)


@job.autocomplete("voice")
async def suggest_voice(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
    voices = ("af_heart", "af_bella", "am_adam")
    return [app_commands.Choice(name=v, value=v) for v in voices if v.startswith(typed)]


@app_commands.command(description="Defers, then answers when the test allows it.")
async def slow(interaction: discord.Interaction) -> None:
    assert isinstance(interaction.client, ProofBot)
    await interaction.response.defer()
    await interaction.client.release_slow.wait()
    try:
        await interaction.edit_original_response(content="late")
    except discord.HTTPException as error:
        interaction.client.errors.append(error)


@app_commands.command(description="Acknowledges privately, then keeps a public status message up to date.")
async def status(interaction: discord.Interaction) -> None:
    assert interaction.channel is not None
    await interaction.response.defer(ephemeral=True, thinking=True)
    await interaction.followup.send("Queued as job 7", ephemeral=True)
    message = await interaction.channel.send("Job 7: queued")
    await message.edit(content="Job 7: rendering 50%")
    fetched = await interaction.channel.fetch_message(message.id)
    assert isinstance(interaction.client, ProofBot)
    interaction.client.fetched.append(fetched.content)


@pytest.fixture
def bot(fake_discord: FakeDiscord) -> ProofBot:
    return ProofBot(fake_discord.guild.id)


async def test_commands_are_synced_to_the_dev_guild_with_an_attachment_option(
    fake_discord: FakeDiscord, bot: ProofBot
) -> None:
    async with running_discord_client(bot, fake_discord):
        sync = fake_discord.calls(ROUTE_GUILD_COMMANDS)[0]
        await wait_until(lambda: bot.latency < 10.0)  # finite once a heartbeat was acknowledged
    assert sync.path.endswith(f"/guilds/{fake_discord.guild.id}/commands")
    by_name = {c["name"]: c for c in sync.params}
    assert set(by_name) == {"talk", "menu", "script", "job", "slow", "status"}
    assert [(o["name"], o["type"]) for o in by_name["talk"]["options"]] == [("photo", 11), ("line", 3)]
    assert fake_discord.gateway.identifies[0]["token"] == fake_discord.token


async def test_slash_command_defers_downloads_the_attachment_and_delivers_files(
    fake_discord: FakeDiscord, bot: ProofBot
) -> None:
    async with running_discord_client(bot, fake_discord):
        photo = fake_discord.upload_attachment("alice.png", PHOTO, content_type="image/png", width=64, height=64)
        with pytest.raises(ValueError, match="line"):
            await fake_discord.run_slash_command("talk", {"photo": photo})
        interaction = await fake_discord.run_slash_command("talk", {"photo": photo, "line": "A: hello"})
        delivery = await fake_discord.wait_for_call(ROUTE_CREATE_MESSAGE)

    assert not bot.errors
    assert bot.downloads == [PHOTO]
    assert fake_discord.calls(ROUTE_TYPING)[0].path.endswith(f"/channels/{fake_discord.channel.id}/typing")
    callback = fake_discord.calls(ROUTE_CALLBACK)[0]
    assert callback.params["type"] == 5  # deferred "thinking…"
    edit = fake_discord.calls(ROUTE_EDIT_ORIGINAL)[0]
    assert edit.path.endswith("/messages/@original")
    assert edit.params["content"] == "Queued alice.png: A: hello"
    assert edit.file("files[0]").data == b"preview"
    original = fake_discord.messages[interaction.original_message_id or ""]
    assert original["flags"] & 128 == 0, "editing the original must end the loading state"
    assert [a["filename"] for a in original["attachments"]] == ["preview.png"]
    assert delivery.params["content"] == f"<@{fake_discord.user.id}> your video"
    uploaded = delivery.file("files[0]")
    assert (uploaded.filename, uploaded.data) == ("result.mp4", RESULT)
    delivered = next(m for m in fake_discord.messages.values() if m["content"].endswith("your video"))
    assert fake_discord.store.cdn_bytes(delivered["attachments"][0]["url"]) == RESULT
    assert delivered["attachments"][0]["content_type"] == "video/mp4"


async def test_followup_replaces_the_thinking_message_and_status_edits_are_kept(
    fake_discord: FakeDiscord, bot: ProofBot
) -> None:
    async with running_discord_client(bot, fake_discord):
        asked = await fake_discord.run_slash_command("status")
        edit = await fake_discord.wait_for_call(ROUTE_EDIT_MESSAGE)
        await wait_until(lambda: bot.fetched == ["Job 7: rendering 50%"])

    ack = fake_discord.messages[asked.original_message_id or ""]
    assert (ack["content"], ack["flags"]) == ("Queued as job 7", 64), (
        "the follow-up must replace 'thinking…', staying ephemeral"
    )
    assert fake_discord.calls(ROUTE_FOLLOWUP)[0].query["wait"] == "1"
    status_message = fake_discord.messages[edit.path.rsplit("/", 1)[-1]]
    assert status_message["content"] == "Job 7: rendering 50%" and status_message["edited_timestamp"] is not None


async def test_button_click_updates_the_message_it_belongs_to(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        shown = await fake_discord.run_slash_command("menu")
        await fake_discord.wait_for_response(shown)
        message_id = shown.original_message_id or ""
        shown_message = fake_discord.messages[message_id]
        assert shown_message["components"][0]["components"][0]["custom_id"] == "proof:press"
        assert [a["filename"] for a in shown_message["attachments"]] == ["card.png"]
        assert fake_discord.calls(ROUTE_CALLBACK)[0].file("files[0]").data == b"card"
        with pytest.raises(LookupError):
            await fake_discord.click_button(message_id, "proof:never-shown")
        bob = fake_discord.add_user("bob")
        press = await fake_discord.click_button(message_id, "proof:press", user=bob)
        answer = await fake_discord.wait_for_response(press)

    assert answer["type"] == 7  # UPDATE_MESSAGE
    assert fake_discord.messages[message_id]["content"] == "Pressed by bob"
    assert fake_discord.messages[message_id]["components"] == []


async def test_select_menu_choice_reaches_the_view(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        shown = await fake_discord.run_slash_command("menu")
        await fake_discord.wait_for_response(shown)
        with pytest.raises(LookupError):
            await fake_discord.choose_options(shown.original_message_id or "", "proof:voice", ["not_a_voice"])
        chosen = await fake_discord.choose_options(shown.original_message_id or "", "proof:voice", ["am_adam"])
        answer = await fake_discord.wait_for_response(chosen)

    assert answer["data"]["content"] == "Voice am_adam"


async def test_autocomplete_is_answered_with_matching_choices(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        typing = await fake_discord.autocomplete("job", {"voice": "af_"}, focused="voice")
        answer = await fake_discord.wait_for_response(typing)

    assert answer["type"] == 8
    assert [c["value"] for c in answer["data"]["choices"]] == ["af_heart", "af_bella"]


async def test_dynamic_button_still_works_after_the_bot_restarts(fake_discord: FakeDiscord) -> None:
    first = ProofBot(fake_discord.guild.id)
    async with running_discord_client(first, fake_discord):
        shown = await fake_discord.run_slash_command("job", {"voice": "am_adam"})
        await fake_discord.wait_for_response(shown)

    restarted = ProofBot(fake_discord.guild.id)
    async with running_discord_client(restarted, fake_discord):
        press = await fake_discord.click_button(shown.original_message_id or "", "proof:job:42:cancel")
        answer = await fake_discord.wait_for_response(press)

    assert len(fake_discord.gateway.identifies) == 2
    assert answer["type"] == 7
    assert fake_discord.messages[shown.original_message_id or ""]["content"] == "Job 42 cancelled"


async def test_answer_after_the_token_expired_gets_unknown_webhook(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        pending = await fake_discord.run_slash_command("slow")
        await fake_discord.wait_for_response(pending)
        fake_discord.expire_interaction(pending)
        bot.release_slow.set()
        await wait_until(lambda: bool(bot.errors))

    error = bot.errors[0]
    assert isinstance(error, discord.NotFound) and error.code == 10015


async def test_modal_submit_delivers_multiline_text(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    text = "A: Hello there.\nB: Hi!\nA: Shall we start?"
    async with running_discord_client(bot, fake_discord):
        opened = await fake_discord.run_slash_command("script")
        modal = await fake_discord.wait_for_response(opened)
        assert modal["type"] == 9
        submitted = await fake_discord.submit_modal(opened, {"proof:script": text})
        answer = await fake_discord.wait_for_response(submitted)

    assert bot.submitted_scripts == [text]
    assert answer["data"]["content"] == "Got 3 lines"
    assert answer["data"]["flags"] == 64  # ephemeral


async def test_rate_limited_channel_message_is_retried_after_the_delay(
    fake_discord: FakeDiscord, bot: ProofBot
) -> None:
    fake_discord.rate_limit_next(ROUTE_CREATE_MESSAGE, retry_after_s=0.4)
    async with running_discord_client(bot, fake_discord):
        photo = fake_discord.upload_attachment("alice.png", PHOTO)
        await fake_discord.run_slash_command("talk", {"photo": photo, "line": "A: hi"})
        retried = await fake_discord.wait_for_call(lambda c: c.route == ROUTE_CREATE_MESSAGE and c.status == 200)

    limited, delivered = fake_discord.calls(ROUTE_CREATE_MESSAGE)
    assert (limited.status, delivered) == (429, retried)
    assert delivered.at_s - limited.at_s >= 0.39  # waited retry_after (less clock granularity)
    assert delivered.file("files[0]").data == RESULT, "files must be re-sent in full on the retry"


async def test_rate_limited_interaction_edit_is_retried(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    fake_discord.rate_limit_next(ROUTE_EDIT_ORIGINAL, retry_after_s=0.2)
    async with running_discord_client(bot, fake_discord):
        photo = fake_discord.upload_attachment("alice.png", PHOTO)
        await fake_discord.run_slash_command("talk", {"photo": photo, "line": "A: hi"})
        await fake_discord.wait_for_call(ROUTE_CREATE_MESSAGE)

    assert [c.status for c in fake_discord.calls(ROUTE_EDIT_ORIGINAL)] == [429, 200]
    assert not bot.errors


async def test_injected_discord_error_reaches_the_bot_with_its_code(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    fake_discord.fail_route(ROUTE_EDIT_MESSAGE, 400, 30046, "Maximum number of edits to messages older than 1 hour")
    async with running_discord_client(bot, fake_discord):
        await fake_discord.run_slash_command("status")
        await wait_until(lambda: bool(bot.errors))

    error = bot.errors[0]
    assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (400, 30046)


async def test_upload_over_the_limit_is_refused_with_40005(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    fake_discord.upload_limit_bytes = len(RESULT) - 1
    async with running_discord_client(bot, fake_discord):
        photo = fake_discord.upload_attachment("alice.png", PHOTO)
        await fake_discord.run_slash_command("talk", {"photo": photo, "line": "A: hi"})
        refused = await fake_discord.wait_for_call(ROUTE_CREATE_MESSAGE)
        await wait_until(lambda: bool(bot.errors))

    assert refused.status == 413
    error = bot.errors[0]
    assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (413, 40005)


async def test_gateway_reconnect_resumes_the_session_without_a_new_identify(
    fake_discord: FakeDiscord, bot: ProofBot
) -> None:
    async with running_discord_client(bot, fake_discord):
        await fake_discord.gateway.request_reconnect()
        await fake_discord.gateway.wait_until_ready()
        shown = await fake_discord.run_slash_command("menu")
        await fake_discord.wait_for_response(shown)

    assert len(fake_discord.gateway.identifies) == 1
    assert fake_discord.gateway.resumes[0]["session_id"] and fake_discord.gateway.resumes[0]["seq"] >= 2


async def test_globally_synced_command_runs_in_the_guild(fake_discord: FakeDiscord) -> None:
    bot = ProofBot(fake_discord.guild.id, sync_globally=True)
    async with running_discord_client(bot, fake_discord):
        shown = await fake_discord.run_slash_command("menu")
        await fake_discord.wait_for_response(shown)
        in_dm = await fake_discord.run_slash_command("menu", channel=fake_discord.dm_channel(fake_discord.user))
        await fake_discord.wait_for_response(in_dm)

    assert "member" not in in_dm.payload and in_dm.payload["user"]["id"] == fake_discord.user.id
    dm_answer = fake_discord.messages[in_dm.original_message_id or ""]
    assert dm_answer["channel_id"] == fake_discord.dm_channel(fake_discord.user).id
    assert [c["name"] for c in fake_discord.global_commands] == ["talk", "menu", "script", "job", "slow", "status"]
    assert not fake_discord.calls(ROUTE_GUILD_COMMANDS)
    assert "guild_id" not in shown.payload["data"]


async def test_direct_message_goes_to_the_users_dm_channel_and_closed_dms_are_403(
    fake_discord: FakeDiscord, bot: ProofBot
) -> None:
    async with running_discord_client(bot, fake_discord):
        user = await bot.fetch_user(int(fake_discord.user.id))
        sent = await user.send("Your video is ready")
        fake_discord.fail_route(ROUTE_CREATE_MESSAGE, 403, 50007, "Cannot send messages to this user")
        with pytest.raises(discord.Forbidden) as refused:
            await user.send("again")

    assert refused.value.code == 50007
    dm = fake_discord.dm_channel(fake_discord.user)
    assert str(sent.channel.id) == dm.id
    assert fake_discord.messages[str(sent.id)]["channel_id"] == dm.id
    assert fake_discord.calls("POST /users/@me/channels")[0].params == {"recipient_id": int(fake_discord.user.id)}


async def test_wrong_token_is_refused_at_login(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    with pytest.raises(discord.LoginFailure):
        await bot.login("not-the-token")
    await bot.close()
    assert fake_discord.calls()[0].status == 401
