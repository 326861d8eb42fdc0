"""Buttons as platform-neutral data: what a button does, on which object, and its id on the wire.

Every button Duet shows is an `Action`: a verb on a draft, a job or the user's consent. Its `custom_id`
(`duet:<noun>:<verb>:<id>`) is the whole state a button carries — Discord `custom_id` (≤ 100 chars,
the Discord adapter's `DynamicItem` template matches `ACTION_PATTERN`) and Telegram `callback_data`
(≤ 64 bytes) alike — so buttons keep working after a restart: the handler parses the id and reads
everything else from the database. Ownership is never encoded here; it is re-checked on every press.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from bot.core.texts import text


class Verb(StrEnum):
    RENDER = "render"  # draft → queued job
    EDIT = "edit"  # draft → back to the script step
    DISCARD = "discard"  # draft → dropped (the preview's Cancel)
    CANCEL = "cancel"  # job → cancelled / cancel requested
    REROLL = "reroll"  # job → a new job with the same inputs and a new seed
    ACCEPT = "accept"  # consent → recorded; the id is a draft waiting for it, or "-"


NOUNS = {
    Verb.RENDER: "draft",
    Verb.EDIT: "draft",
    Verb.DISCARD: "draft",
    Verb.CANCEL: "job",
    Verb.REROLL: "job",
    Verb.ACCEPT: "consent",
}
_LABEL_KEYS = {
    Verb.RENDER: "button.render",
    Verb.EDIT: "button.edit",
    Verb.DISCARD: "button.cancel",
    Verb.CANCEL: "button.cancel",
    Verb.REROLL: "button.reroll",
    Verb.ACCEPT: "button.accept",
}
NO_TARGET = "-"
ACTION_PATTERN = r"duet:(?P<noun>draft|job|consent):(?P<verb>[a-z]+):(?P<target>[0-9A-Za-z-]{1,36})"
_ACTION = re.compile(ACTION_PATTERN)


@dataclass(frozen=True)
class Action:
    verb: Verb
    target: str  # a draft id, a job id, or NO_TARGET

    @property
    def custom_id(self) -> str:
        return f"duet:{NOUNS[self.verb]}:{self.verb.value}:{self.target}"

    def label(self, locale: str | None) -> str:
        return text(_LABEL_KEYS[self.verb], locale)

    @property
    def is_destructive(self) -> bool:
        """Adapters colour these red (Discord `ButtonStyle.danger`)."""
        return self.verb in (Verb.CANCEL, Verb.DISCARD)


def parse_action(custom_id: str) -> Action | None:
    """The action a pressed button stands for, or None for an id that is not ours or is malformed."""
    match = _ACTION.fullmatch(custom_id or "")
    if match is None:
        return None
    try:
        verb = Verb(match["verb"])
    except ValueError:
        return None
    if NOUNS[verb] != match["noun"]:
        return None
    return Action(verb, match["target"])


def preview_actions(draft_id: str) -> tuple[Action, ...]:
    return (Action(Verb.RENDER, draft_id), Action(Verb.EDIT, draft_id), Action(Verb.DISCARD, draft_id))


def consent_actions(draft_id: str | None = None) -> tuple[Action, ...]:
    return (Action(Verb.ACCEPT, draft_id or NO_TARGET),)
