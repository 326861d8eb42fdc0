"""The fake Discord proven with the real discord.py 2.7: a minimal app-command bot runs against it
and the tests assert on the REST calls the fake recorded."""

from __future__ import annotations

import io

import discord
import pytest
from discord import app_commands

from tests.fakes.discord_server import (
    ROUTE_CALLBACK,
    ROUTE_CREATE_MESSAGE,
    ROUTE_EDIT_ORIGINAL,
    ROUTE_GUILD_COMMANDS,
    FakeDiscord,
)
from tests.fakes.fixtures import fake_discord, running_discord_client  # noqa: F401
from tests.fakes.recording import wait_until

PHOTO = b"\x89PNG\r\n\x1a\nnot-really-a-png-but-bytes-are-bytes"
RESULT = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4


class PressView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Press", custom_id="proof:press")
    async def press(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"Pressed by {interaction.user.name}", view=None)


class ScriptModal(discord.ui.Modal, title="Dialogue script"):
    script = discord.ui.TextInput(label="Script", custom_id="proof:script", style=discord.TextStyle.long, max_length=4000)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ProofBot)
        interaction.client.submitted_scripts.append(self.script.value)
        await interaction.response.send_message(f"Got {len(self.script.value.splitlines())} lines", ephemeral=True)


class ProofBot(discord.Client):
    """The smallest bot with the shapes Duet needs: an attachment command, a button, a modal."""

    def __init__(self, guild_id: str) -> None:
        super().__init__(intents=discord.Intents.default())
        self.tree = app_commands.CommandTree(self)
        self.dev_guild = discord.Object(int(guild_id))
        self.downloads: list[bytes] = []
        self.submitted_scripts: list[str] = []
        self.errors: list[BaseException] = []
        self.tree.error(self._record_error)
        for command in (talk, menu, script):
            self.tree.add_command(command)

    async def setup_hook(self) -> None:
        self.tree.copy_global_to(guild=self.dev_guild)
        await self.tree.sync(guild=self.dev_guild)

    async def _record_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.errors.append(error.__cause__ or error)


@app_commands.command(description="Two photos in, a video out (one photo here).")
async def talk(interaction: discord.Interaction, photo: discord.Attachment, line: str) -> None:
    await interaction.response.defer(thinking=True)
    assert isinstance(interaction.client, ProofBot) and interaction.channel is not None
    interaction.client.downloads.append(await photo.read())
    await interaction.edit_original_response(
        content=f"Queued {photo.filename}: {line}", attachments=[discord.File(io.BytesIO(b"preview"), "preview.png")]
    )
    await interaction.channel.send(f"<@{interaction.user.id}> your video", file=discord.File(io.BytesIO(RESULT), "result.mp4"))


@app_commands.command(description="Shows a button.")
async def menu(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("Pick one", view=PressView())


@app_commands.command(description="Asks for a script in a modal.")
async def script(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(ScriptModal())


@pytest.fixture
def bot(fake_discord: FakeDiscord) -> ProofBot:
    return ProofBot(fake_discord.guild.id)


async def test_commands_are_synced_to_the_dev_guild_with_an_attachment_option(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        sync = fake_discord.calls(ROUTE_GUILD_COMMANDS)[0]
    assert sync.path.endswith(f"/guilds/{fake_discord.guild.id}/commands")
    by_name = {c["name"]: c for c in sync.params}
    assert set(by_name) == {"talk", "menu", "script"}
    assert [(o["name"], o["type"]) for o in by_name["talk"]["options"]] == [("photo", 11), ("line", 3)]
    assert fake_discord.identifies[0]["token"] == fake_discord.token


async def test_slash_command_defers_downloads_the_attachment_and_delivers_files(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        photo = fake_discord.upload_attachment("alice.png", PHOTO, content_type="image/png", width=64, height=64)
        interaction = await fake_discord.run_slash_command("talk", {"photo": photo, "line": "A: hello"})
        delivery = await fake_discord.wait_for_call(ROUTE_CREATE_MESSAGE)

    assert not bot.errors
    assert bot.downloads == [PHOTO]
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
    assert fake_discord.cdn_bytes(delivered["attachments"][0]["url"]) == RESULT


async def test_button_click_updates_the_message_it_belongs_to(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        shown = await fake_discord.run_slash_command("menu")
        await fake_discord.wait_for_response(shown)
        message_id = shown.original_message_id or ""
        assert fake_discord.messages[message_id]["components"][0]["components"][0]["custom_id"] == "proof:press"
        bob = fake_discord.add_user("bob")
        press = await fake_discord.click_button(message_id, "proof:press", user=bob)
        answer = await fake_discord.wait_for_response(press)

    assert answer["type"] == 7  # UPDATE_MESSAGE
    assert fake_discord.messages[message_id]["content"] == "Pressed by bob"
    assert fake_discord.messages[message_id]["components"] == []


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


async def test_rate_limited_channel_message_is_retried_after_the_delay(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    fake_discord.rate_limit_next(ROUTE_CREATE_MESSAGE, retry_after_s=0.4)
    async with running_discord_client(bot, fake_discord):
        photo = fake_discord.upload_attachment("alice.png", PHOTO)
        await fake_discord.run_slash_command("talk", {"photo": photo, "line": "A: hi"})
        retried = await fake_discord.wait_for_call(lambda c: c.route == ROUTE_CREATE_MESSAGE and c.status == 200)

    limited, delivered = fake_discord.calls(ROUTE_CREATE_MESSAGE)
    assert (limited.status, delivered) == (429, retried)
    assert delivered.at_s - limited.at_s >= 0.4
    assert delivered.file("files[0]").data == RESULT, "files must be re-sent in full on the retry"


async def test_rate_limited_interaction_edit_is_retried(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    fake_discord.rate_limit_next(ROUTE_EDIT_ORIGINAL, retry_after_s=0.2)
    async with running_discord_client(bot, fake_discord):
        photo = fake_discord.upload_attachment("alice.png", PHOTO)
        await fake_discord.run_slash_command("talk", {"photo": photo, "line": "A: hi"})
        await fake_discord.wait_for_call(ROUTE_CREATE_MESSAGE)

    assert [c.status for c in fake_discord.calls(ROUTE_EDIT_ORIGINAL)] == [429, 200]
    assert not bot.errors


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


async def test_gateway_reconnect_resumes_the_session_without_a_new_identify(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    async with running_discord_client(bot, fake_discord):
        await fake_discord.request_reconnect()
        await fake_discord.wait_until_ready()
        shown = await fake_discord.run_slash_command("menu")
        await fake_discord.wait_for_response(shown)

    assert len(fake_discord.identifies) == 1
    assert fake_discord.resumes[0]["session_id"] and fake_discord.resumes[0]["seq"] >= 2


async def test_wrong_token_is_refused_at_login(fake_discord: FakeDiscord, bot: ProofBot) -> None:
    with pytest.raises(discord.LoginFailure):
        await bot.login("not-the-token")
    await bot.close()
    assert fake_discord.calls()[0].status == 401

