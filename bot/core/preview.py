"""The preview card shown before any GPU time is spent: frame, script, voices, duration, ETA, buttons.

`build_preview` turns a `Prepared` request into a `PreviewCard`, plain data each adapter lays out its
own way (Telegram: a photo with a caption and an inline keyboard; Discord: an embed with the image and
buttons). Speakers are marked with the same colours as their A/B boxes in the image
(`compose.SPEAKER_COLORS`): a coloured circle in text, the RGB value for an embed's colour bar.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from bot.core.actions import Action, preview_actions
from bot.core.compose import SPEAKER_COLORS, draw_preview
from bot.core.status import Throughput
from bot.core.submit import Prepared
from bot.core.texts import duration_text, text
from bot.core.voices import Voice
from storage.contract import Speaker

SPEAKER_MARKERS: dict[Speaker, str] = {"A": "🔵", "B": "🟠"}  # the blue and orange of SPEAKER_COLORS
SPEAKER_RGB: dict[Speaker, tuple[int, int, int]] = {"A": SPEAKER_COLORS[0], "B": SPEAKER_COLORS[1]}
TELEGRAM_CAPTION_CHARS = 1024


@dataclass(frozen=True)
class PreviewLine:
    speaker: Speaker
    text: str

    @property
    def marker(self) -> str:
        return SPEAKER_MARKERS[self.speaker]

    def render(self) -> str:
        return f"{self.marker} {self.speaker}: {self.text}"


@dataclass(frozen=True)
class PreviewCard:
    draft_id: str
    image_jpeg: bytes  # the composed frame with each person's box badged A / B
    lines: tuple[PreviewLine, ...]
    voices: dict[Speaker, Voice]
    scene: str
    estimated_duration_s: float
    eta_s: float | None  # engine time once it starts, plus the queue ahead
    actions: tuple[Action, ...]

    def summary(self, locale: str | None) -> str:
        """Voices, scene, duration and ETA: the lines under the script."""
        parts = [
            text(
                "preview.voices",
                locale,
                voice_a=self.voices["A"].label(locale),
                voice_b=self.voices["B"].label(locale),
            )
        ]
        if self.scene:
            parts.append(text("preview.scene", locale, scene=self.scene))
        eta = (
            text("status.eta", locale, eta=duration_text(self.eta_s, locale))
            if self.eta_s is not None
            else text("status.eta_unknown", locale)
        )
        parts.append(text("preview.duration", locale, duration=duration_text(self.estimated_duration_s, locale), eta=eta))
        return "\n".join(parts)

    def caption(self, locale: str | None, max_chars: int = TELEGRAM_CAPTION_CHARS) -> str:
        """Title, speaker-marked script and summary in at most `max_chars` (lines are dropped from the
        end of the script, with a note of how many, rather than cut mid-word)."""
        head = text("preview.title", locale)
        tail = self.summary(locale)
        rendered = [line.render() for line in self.lines]
        for shown in range(len(rendered), -1, -1):
            body = rendered[:shown]
            if shown < len(rendered):
                body = body + [text("preview.more_lines", locale, count=len(rendered) - shown)]
            caption = "\n\n".join([head, "\n".join(body), tail])
            if len(caption) <= max_chars:
                return caption
        return (head + "\n\n" + tail)[:max_chars]


def _jpeg(prepared: Prepared) -> bytes:
    buffer = io.BytesIO()
    draw_preview(prepared.composition).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def build_preview(prepared: Prepared, draft_id: str, throughput: Throughput, *, jobs_ahead: int) -> PreviewCard:
    """The card for a checked request (CPU work: draws and encodes the image; call via a thread)."""
    duration = prepared.estimated_speech_s
    own = throughput.job_seconds(duration)
    eta = None if own is None else own + jobs_ahead * (throughput.job_p50_s or own)
    return PreviewCard(
        draft_id=draft_id,
        image_jpeg=_jpeg(prepared),
        lines=tuple(PreviewLine(line.speaker, line.text) for line in prepared.dialogue.lines),
        voices=dict(prepared.voices.voices),
        scene=prepared.draft.scene,
        estimated_duration_s=duration,
        eta_s=eta,
        actions=preview_actions(draft_id),
    )
