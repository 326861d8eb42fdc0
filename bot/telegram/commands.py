"""Commands outside the conversation (/start, /help, /jobs, /show, /cancel, /voices) and the buttons.

Buttons carry an action id (`duet:<noun>:<verb>:<id>`, bot/core/actions.py) and nothing else, so they
work on messages sent before a restart. Every press is checked against its owner first (a cheap read),
then answered — with an alert when the button is someone else's — and only then acted on.
"""

from __future__ import annotations

from telegram import Update
from telegram.ext import CallbackQueryHandler, CommandHandler

from bot.core.actions import Action, Verb, parse_action
from bot.core.answers import cancel_text, jobs_text, show_actions, voices_text
from bot.core.drafts import DraftNotFound
from bot.core.service import ConsentRequired
from bot.core.status import status_text
from bot.core.texts import text
from bot.telegram.replies import (
    Context,
    actor_of,
    answer_errors,
    locale_of,
    post_job_status,
    reply,
    requester_of,
    send_consent_notice,
    send_preview,
    service_of,
)
from storage.errors import JobNotFound


async def start(update: Update, context: Context) -> None:
    await reply(update, text("start", locale_of(update)))


async def help_command(update: Update, context: Context) -> None:
    await reply(update, text("help", locale_of(update)))


@answer_errors
async def jobs(update: Update, context: Context) -> None:
    """/jobs: the user's ten newest videos with their state."""
    records = await service_of(context).list_jobs(actor_of(update), limit=10)
    await reply(update, jobs_text(records, locale_of(update)))


@answer_errors
async def show(update: Update, context: Context) -> None:
    """/show ID: the job's status, with Cancel while it runs and Re-roll once it is done."""
    locale = locale_of(update)
    if not context.args:
        await reply(update, text("show.usage", locale))
        return
    service = service_of(context)
    job = await service.job(context.args[0], actor_of(update))
    status = await service.status(job)
    await reply(update, status_text(status, locale), show_actions(status))


@answer_errors
async def cancel(update: Update, context: Context) -> None:
    """/cancel [ID]: the given job, or the newest active one. Someone else's job is "not found"."""
    locale = locale_of(update)
    service = service_of(context)
    actor = actor_of(update)
    status = await service.cancel(context.args[0], actor) if context.args else await service.cancel_latest(actor)
    if status is None:
        await reply(update, text("cancel.none", locale))
        return
    await reply(update, cancel_text(status, locale))


async def voices(update: Update, context: Context) -> None:
    await reply(update, voices_text(locale_of(update)))


# ---- buttons ------------------------------------------------------------------------------------


@answer_errors
async def on_button(update: Update, context: Context) -> None:
    query = update.callback_query
    assert query is not None
    action = parse_action(query.data or "")
    if action is None:
        await query.answer()
        return
    service = service_of(context)
    actor = actor_of(update)
    locale = locale_of(update)
    try:
        if action.verb in (Verb.RENDER, Verb.DISCARD) or (action.verb == Verb.ACCEPT and action.target != "-"):
            await service.draft(action.target, actor)
        elif action.verb in (Verb.CANCEL, Verb.REROLL):
            await service.job(action.target, actor)
    except (DraftNotFound, JobNotFound):
        await query.answer(text("not_yours", locale), show_alert=True)
        return
    await query.answer()
    await _BUTTONS[action.verb](update, context, action)


async def _render(update: Update, context: Context, action: Action) -> None:
    service = service_of(context)
    try:
        submission = await service.submit_draft(action.target, actor_of(update))
    except ConsentRequired:
        await send_consent_notice(update, action.target)
        return
    await update.callback_query.edit_message_reply_markup(None)  # type: ignore[union-attr]
    await post_job_status(update, context, submission)


async def _discard(update: Update, context: Context, action: Action) -> None:
    await service_of(context).discard_draft(action.target, actor_of(update))
    await update.callback_query.edit_message_reply_markup(None)  # type: ignore[union-attr]
    await reply(update, text("conversation.cancelled", locale_of(update)))


async def _cancel_job(update: Update, context: Context, action: Action) -> None:
    status = await service_of(context).cancel(action.target, actor_of(update))
    await reply(update, cancel_text(status, locale_of(update)))


async def _reroll(update: Update, context: Context, action: Action) -> None:
    """Same inputs, new seed; the new video answers the message the button was on."""
    query = update.callback_query
    assert query is not None and query.message is not None
    requester = requester_of(update, query.message.message_id)
    submission = await service_of(context).reroll(
        action.target, actor_of(update), requester, idempotency_key=f"telegram:update:{update.update_id}"
    )
    await post_job_status(update, context, submission)


async def _accept(update: Update, context: Context, action: Action) -> None:
    """Accept on a notice shown for a waiting draft (album shortcut, Render before consent)."""
    await service_of(context).record_consent(actor_of(update))
    await update.callback_query.edit_message_reply_markup(None)  # type: ignore[union-attr]
    await reply(update, text("consent.thanks", locale_of(update)))
    if action.target != "-":
        await send_preview(update, context, action.target)


_BUTTONS = {
    Verb.RENDER: _render,
    Verb.DISCARD: _discard,
    Verb.CANCEL: _cancel_job,
    Verb.REROLL: _reroll,
    Verb.ACCEPT: _accept,
}


def command_handlers() -> list:
    return [
        CommandHandler("start", start),
        CommandHandler("help", help_command),
        CommandHandler("jobs", jobs),
        CommandHandler("show", show),
        CommandHandler("cancel", cancel),
        CommandHandler("voices", voices),
        # Edit is the conversation's entry point (bot/telegram/conversation.py), not listed here.
        CallbackQueryHandler(on_button, pattern=r"^duet:(draft:(render|discard)|job|consent):"),
    ]
