"""Every Duet button on Discord is one `ActionButton`: a `DynamicItem` whose custom id is the action
(`duet:<noun>:<verb>:<id>`, bot/core/actions.py), so buttons on messages posted before a restart still
work — discord.py rebuilds the item from the id the press carries.

The id carries no permission: on every press the owner is read again from the database (`BotService.job`
lets an admin through, `BotService.draft` only the owner), and a stranger gets an ephemeral "not yours"
before anything happens. Each verb's handler then answers within Discord's 3 seconds (an update of the
message, a modal, or a defer) before the slow work.
"""

from __future__ import annotations

import re

import discord

from bot.core.actions import ACTION_PATTERN, NO_TARGET, Action, Verb, consent_actions, parse_action
from bot.core.answers import cancel_text
from bot.core.drafts import DraftNotFound
from bot.core.service import ConsentRequired
from bot.core.texts import text
from bot.discord.modals import ScriptModal
from bot.discord.replies import (
    actor_of,
    answer_errors,
    locale_of,
    post_job_status,
    post_preview,
    requester_of,
    say,
    service_of,
)
from storage.errors import JobNotFound

_STYLES = {Verb.RENDER: discord.ButtonStyle.primary, Verb.ACCEPT: discord.ButtonStyle.success}


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=ACTION_PATTERN):
    def __init__(self, action: Action, locale: str | None = None, *, label: str | None = None) -> None:
        style = _STYLES.get(action.verb, discord.ButtonStyle.secondary)
        if action.is_destructive:
            style = discord.ButtonStyle.danger
        super().__init__(
            discord.ui.Button(label=label or action.label(locale), style=style, custom_id=action.custom_id)
        )
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> ActionButton:
        action = parse_action(item.custom_id or "")
        if action is None:
            raise ValueError(f"not a Duet action: {item.custom_id!r}")
        return cls(action, label=item.label)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """The presser must own the draft or job (admins: any job), read now from the database."""
        service = service_of(interaction)
        actor = actor_of(interaction)
        target = self.action.target
        try:
            if self.action.verb in (Verb.CANCEL, Verb.REROLL):
                await service.job(target, actor)
            elif target != NO_TARGET:
                await service.draft(target, actor)
        except (DraftNotFound, JobNotFound):
            await say(interaction, text("not_yours", locale_of(interaction)))
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        await _HANDLERS[self.action.verb](interaction, self.action)


@answer_errors
async def _render(interaction: discord.Interaction, action: Action) -> None:
    """Render on the preview: queue the draft (the draft id is the idempotency key), strip the card's
    buttons, post the status message as a reply to the card."""
    await interaction.response.defer()
    service = service_of(interaction)
    assert interaction.message is not None
    try:
        submission = await service.submit_draft(
            action.target, actor_of(interaction), reply_to_message_id=str(interaction.message.id)
        )
    except ConsentRequired:
        await say(interaction, text("consent.notice", locale_of(interaction)), consent_actions(action.target))
        return
    await interaction.message.edit(view=None)
    await post_job_status(interaction, submission)


@answer_errors
async def _edit(interaction: discord.Interaction, action: Action) -> None:
    """Edit on the preview: the script modal, filled with the current script and scene (a modal must
    be the first answer, so nothing slow comes before it)."""
    state = await service_of(interaction).draft(action.target, actor_of(interaction))
    await interaction.response.send_modal(
        ScriptModal(state, locale_of(interaction), service_of(interaction).settings)
    )


@answer_errors
async def _discard(interaction: discord.Interaction, action: Action) -> None:
    """Cancel on the preview: drop the draft and take the photos off the card."""
    await service_of(interaction).discard_draft(action.target, actor_of(interaction))
    await interaction.response.edit_message(
        content=text("conversation.cancelled", locale_of(interaction)), embed=None, attachments=[], view=None
    )


@answer_errors
async def _cancel_job(interaction: discord.Interaction, action: Action) -> None:
    status = await service_of(interaction).cancel(action.target, actor_of(interaction))
    await say(interaction, cancel_text(status, locale_of(interaction)))


@answer_errors
async def _reroll(interaction: discord.Interaction, action: Action) -> None:
    """Same inputs, new seed; the new job answers the message the button was on (the video)."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.message is not None
    submission = await service_of(interaction).reroll(
        action.target,
        actor_of(interaction),
        requester_of(interaction, interaction.message.id),
        idempotency_key=f"discord:interaction:{interaction.id}",
    )
    await post_job_status(interaction, submission)
    await say(interaction, text("submitted", locale_of(interaction), job_id=submission.job_id))


@answer_errors
async def _accept(interaction: discord.Interaction, action: Action) -> None:
    """Accept on the consent notice: remember it, then show the waiting draft's preview."""
    locale = locale_of(interaction)
    await service_of(interaction).record_consent(actor_of(interaction))
    await interaction.response.edit_message(content=text("consent.thanks", locale), view=None)
    if action.target != NO_TARGET:
        await post_preview(interaction, action.target)


_HANDLERS = {
    Verb.RENDER: _render,
    Verb.EDIT: _edit,
    Verb.DISCARD: _discard,
    Verb.CANCEL: _cancel_job,
    Verb.REROLL: _reroll,
    Verb.ACCEPT: _accept,
}
