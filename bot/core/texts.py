"""Every user-facing sentence of the chat front ends, in English and Simplified Chinese, in one place.

Input refusals keep their own texts next to their checks (`bot/core/errors.py`, `photos.py`, `compose.py`);
this catalog holds everything else both platforms say: prompts of the conversation, button labels,
status lines, delivery captions, refusals of the queue. Adapters call `text(key, locale, **params)` and
never write user-facing English themselves, so a wording change touches this file only. Texts are plain
(no Markdown/HTML): both adapters send them without a parse mode, so user text echoed into them is inert.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.core.errors import InputError, Locale, normalize_locale
from storage.errors import DuetError, JobNotFound, SubmitRefused

TEXTS: Mapping[str, Mapping[Locale, str]] = {
    # ---- first contact and help ------------------------------------------------------------------
    "start": {
        "en": "Hi! I turn two photos and a dialogue into a video of the two people talking.\n"
        "Send /talk to make one, /help for everything I can do.",
        "zh": "你好！我可以把两张照片和一段对话变成两个人对话的视频。\n发送 /talk 开始制作，发送 /help 查看全部功能。",
    },
    "help": {
        "en": "How to make a video:\n"
        "1. /talk, then send photo A (left, speaks the A lines) and photo B (right).\n"
        "2. Send the dialogue, one turn per line, e.g. “A: Hello!” / “B: Hi!” (text or a .txt file).\n"
        "3. Describe the scene or /skip, pick the voices, check the preview and press Render.\n"
        "Shortcut: send both photos as one album with the dialogue as its caption.\n\n"
        "/jobs — your videos · /show ID — one video · /cancel [ID] — stop a video · /voices — all voices",
        "zh": "制作视频的步骤：\n"
        "1. 发送 /talk，然后发送照片 A（左侧，说 A 的台词）和照片 B（右侧）。\n"
        "2. 发送对话，每句一行，例如“A: 你好！”/“B: 你好呀！”（文字或 .txt 文件）。\n"
        "3. 描述场景或发送 /skip，选择声音，确认预览后点“生成”。\n"
        "快捷方式：把两张照片作为一个相册发送，并把对话写在相册说明里。\n\n"
        "/jobs — 我的视频 · /show 编号 — 查看视频 · /cancel [编号] — 取消视频 · /voices — 全部声音",
    },
    "consent.notice": {
        "en": "Before your first video: only use photos of people who agreed to be animated, and that you "
        "have the right to use; no minors, nothing sexual, hateful or defamatory. Every video is labelled "
        "as AI-generated. Press Accept to continue.",
        "zh": "制作第一个视频之前请确认：只使用已同意被制作成视频、且你有权使用的人物照片；不涉及未成年人，"
        "不含色情、仇恨或诽谤内容。每个视频都会标注为 AI 生成。点“同意”继续。",
    },
    "consent.thanks": {"en": "Thank you. Let’s start.", "zh": "谢谢，我们开始吧。"},
    "consent.required": {
        "en": "Please accept the notice first (send /talk).",
        "zh": "请先同意使用须知（发送 /talk）。",
    },
    # ---- the conversation ---------------------------------------------------------------------------
    "ask.photo_a": {
        "en": "Send photo A: the person on the left, who speaks the A lines (as a photo or as a file).",
        "zh": "请发送照片 A：左侧的人，说 A 的台词（可以作为图片或文件发送）。",
    },
    "ask.photo_b": {
        "en": "Got photo A. Now send photo B: the person on the right, who speaks the B lines.",
        "zh": "已收到照片 A。请发送照片 B：右侧的人，说 B 的台词。",
    },
    "ask.script": {
        "en": "Now the dialogue, one turn per line, for example:\nA: Hello!\nB: Hi there!\n"
        "Send it as a message or as a .txt file.",
        "zh": "请发送对话，每句一行，例如：\nA: 你好！\nB: 你好呀！\n可以直接发送文字，也可以发送 .txt 文件。",
    },
    "ask.scene": {
        "en": "Describe the scene in a few words (e.g. “two friends chatting in a café”), or send /skip.",
        "zh": "用几句话描述场景（例如“两个朋友在咖啡馆聊天”），或发送 /skip 跳过。",
    },
    "ask.voice": {"en": "Choose the voice of {speaker}:", "zh": "请选择 {speaker} 的声音："},
    "ask.photo_again": {
        "en": "Please send photo {photo} again as a photo or an image file.",
        "zh": "请重新发送照片 {photo}（图片或图片文件）。",
    },
    "ask.script_again": {
        "en": "Please send the dialogue as text or as a .txt file.",
        "zh": "请以文字或 .txt 文件的形式发送对话。",
    },
    "album.incomplete": {
        "en": "For the shortcut, send exactly two photos as one album, with the dialogue as its caption.",
        "zh": "快捷方式需要把恰好两张照片作为一个相册发送，并在相册说明里写上对话。",
    },
    "conversation.cancelled": {
        "en": "Stopped. Nothing was rendered. Send /talk to start again.",
        "zh": "已停止，没有生成任何视频。发送 /talk 重新开始。",
    },
    "conversation.timeout": {
        "en": "This request waited too long and was closed. Send /talk to start again.",
        "zh": "这个请求等待太久，已关闭。发送 /talk 重新开始。",
    },
    "draft.missing": {
        "en": "This preview is no longer available. Send /talk to start again.",
        "zh": "这个预览已失效。发送 /talk 重新开始。",
    },
    "file.too_large": {
        "en": "That file is {size}; the limit is {limit}. Send a smaller one.",
        "zh": "文件大小为 {size}，上限为 {limit}。请发送更小的文件。",
    },
    # ---- preview ------------------------------------------------------------------------------------
    "preview.title": {"en": "Preview — check before rendering", "zh": "预览 — 生成前请确认"},
    "preview.voices": {"en": "Voices: A {voice_a} · B {voice_b}", "zh": "声音：A {voice_a} · B {voice_b}"},
    "preview.scene": {"en": "Scene: {scene}", "zh": "场景：{scene}"},
    "preview.duration": {
        "en": "About {duration} of video · {eta}",
        "zh": "视频约 {duration} · {eta}",
    },
    "preview.more_lines": {"en": "… and {count} more lines", "zh": "……还有 {count} 句"},
    "button.render": {"en": "Render", "zh": "生成"},
    "button.edit": {"en": "Edit", "zh": "修改"},
    "button.cancel": {"en": "Cancel", "zh": "取消"},
    "button.reroll": {"en": "Re-roll", "zh": "重新生成"},
    "button.accept": {"en": "Accept", "zh": "同意"},
    "button.voice_auto": {"en": "Automatic", "zh": "自动"},
    # ---- status -------------------------------------------------------------------------------------
    "status.queued": {"en": "Queued — position {position}", "zh": "排队中 — 第 {position} 位"},
    "status.queued_retry": {"en": "Queued again after a problem (attempt {attempt})", "zh": "出现问题后重新排队（第 {attempt} 次尝试）"},
    "status.running": {"en": "Working — {stage}", "zh": "制作中 — {stage}"},
    "status.cancelling": {"en": "Stopping…", "zh": "正在停止……"},
    "status.succeeded": {"en": "Done! Your video is below.", "zh": "完成！视频见下方。"},
    "status.failed": {
        "en": "Sorry, this video could not be made: {reason}\nJob {job_id} — you can send this id to an admin.",
        "zh": "抱歉，这个视频没能生成：{reason}\n任务 {job_id} — 可以把这个编号发给管理员。",
    },
    "status.failed_reason": {"en": "an error in the render service.", "zh": "渲染服务出错。"},
    "status.cancelled": {"en": "Cancelled. Job {job_id}.", "zh": "已取消。任务 {job_id}。"},
    "status.eta": {"en": "ready in about {eta}", "zh": "预计 {eta} 后完成"},
    "status.eta_unknown": {"en": "time estimate after the first videos", "zh": "完成几个视频后才能估计时间"},
    "status.job": {"en": "Job {job_id}", "zh": "任务 {job_id}"},
    "stage.waiting": {"en": "starting", "zh": "准备开始"},
    "stage.tts": {"en": "speaking the lines", "zh": "合成语音"},
    "stage.audio": {"en": "listening to the voices", "zh": "分析语音"},
    "stage.encode": {"en": "studying the photos", "zh": "分析照片"},
    "stage.render": {"en": "animating", "zh": "生成画面"},
    "stage.decode": {"en": "drawing the frames", "zh": "绘制画面"},
    "stage.mux": {"en": "packing the video", "zh": "封装视频"},
    # ---- results ------------------------------------------------------------------------------------
    "result.caption": {
        "en": "{mention} your video is ready. AI-generated video — the people shown did not say this.",
        "zh": "{mention} 你的视频已完成。AI 生成的视频——画面中的人并没有真的说过这些话。",
    },
    "result.link": {
        "en": "{mention} your video is ready, but it is too large to send here ({size}). "
        "Download it within {hours} h: {url}\nAI-generated video — the people shown did not say this.",
        "zh": "{mention} 你的视频已完成，但文件太大（{size}），无法在这里发送。请在 {hours} 小时内下载：{url}\n"
        "AI 生成的视频——画面中的人并没有真的说过这些话。",
    },
    "result.too_large": {
        "en": "{mention} your video is ready but too large to send here ({size}). Job {job_id} — ask an admin for it.",
        "zh": "{mention} 你的视频已完成，但文件太大（{size}），无法在这里发送。任务 {job_id} — 请联系管理员获取。",
    },
    # ---- commands -----------------------------------------------------------------------------------
    "submitted": {
        "en": "Queued as job {job_id}. I will update this message and reply with the video.",
        "zh": "已加入队列，任务 {job_id}。我会更新这条消息，并在完成后回复视频。",
    },
    "submitted.duplicate": {
        "en": "This request is already job {job_id}.",
        "zh": "这个请求已经是任务 {job_id}。",
    },
    "jobs.none": {"en": "You have no videos yet. Send /talk to make one.", "zh": "你还没有视频。发送 /talk 制作一个。"},
    "jobs.header": {"en": "Your videos (newest first):", "zh": "你的视频（最新在前）："},
    "jobs.line": {"en": "{job_id} · {state} · {created}", "zh": "{job_id} · {state} · {created}"},
    "state.queued": {"en": "queued", "zh": "排队中"},
    "state.running": {"en": "working", "zh": "制作中"},
    "state.succeeded": {"en": "done", "zh": "已完成"},
    "state.failed": {"en": "failed", "zh": "失败"},
    "state.cancelled": {"en": "cancelled", "zh": "已取消"},
    "state.dead": {"en": "failed", "zh": "失败"},
    "show.usage": {"en": "Send /show followed by a job id (see /jobs).", "zh": "请发送 /show 加任务编号（见 /jobs）。"},
    "cancel.none": {"en": "You have no video in progress.", "zh": "你没有正在进行的视频。"},
    "cancel.done": {"en": "Job {job_id} is cancelled.", "zh": "任务 {job_id} 已取消。"},
    "cancel.requested": {
        "en": "Stopping job {job_id} — it ends at the next step.",
        "zh": "正在停止任务 {job_id}，会在下一步结束。",
    },
    "cancel.already_ended": {"en": "Job {job_id} has already ended.", "zh": "任务 {job_id} 已经结束。"},
    "voices.header": {"en": "Voices (use the name or the id):", "zh": "可用声音（可用名称或编号）："},
    "not_found": {"en": "No job {job_id} was found.", "zh": "没有找到任务 {job_id}。"},
    "not_yours": {"en": "Only the person who asked for this video can do that.", "zh": "只有发起这个视频的人才能这样做。"},
    "reroll.inputs_gone": {
        "en": "The photos of job {job_id} have been deleted (they are kept for a day). Send /talk to start again.",
        "zh": "任务 {job_id} 的照片已删除（只保留一天）。发送 /talk 重新开始。",
    },
    # ---- forms and admin commands (Discord modals and slash commands) ----------------------------
    "preview.below": {
        "en": "Your preview is below: check it, then press Render.",
        "zh": "预览见下方：确认后点“生成”。",
    },
    "modal.title": {"en": "Your dialogue", "zh": "你的对话"},
    "modal.script_label": {"en": "Dialogue, one turn per line", "zh": "对话，每句一行"},
    "modal.script_placeholder": {"en": "A: Hello!\nB: Hi there!", "zh": "A: 你好！\nB: 你好呀！"},
    "modal.scene_label": {"en": "Scene (optional)", "zh": "场景（可选）"},
    "modal.scene_placeholder": {"en": "two friends chatting in a café", "zh": "两个朋友在咖啡馆聊天"},
    "admin.only": {"en": "Only Duet admins can do that.", "zh": "只有 Duet 管理员可以这样做。"},
    "admin.paused": {
        "en": "Paused: no new videos are accepted and engines start no new jobs.",
        "zh": "已暂停：不再接受新的视频请求，渲染服务也不再开始新任务。",
    },
    "admin.resumed": {"en": "Resumed: the queue is open again.", "zh": "已恢复：队列重新开放。"},
    "admin.stats": {
        "en": "Queue: {queued} waiting, {running} working, {failed} failed (all time)\n"
        "Done: {hour} in the last hour, {day} in the last day\n"
        "Wait p50 {wait} · render p50 {render}\nIntake {intake} · engines {claims}",
        "zh": "队列：{queued} 个排队，{running} 个制作中，累计失败 {failed} 个\n"
        "完成：最近一小时 {hour} 个，最近一天 {day} 个\n"
        "等待中位数 {wait} · 渲染中位数 {render}\n接收 {intake} · 渲染 {claims}",
    },
    "admin.open": {"en": "open", "zh": "开放"},
    "admin.closed": {"en": "paused", "zh": "暂停"},
    "admin.unknown": {"en": "n/a", "zh": "暂无"},
    # ---- refusals of the queue (SubmitRefused.reason) ---------------------------------------------
    "refused.paused": {
        "en": "Duet is not taking new videos right now. Please try again later.",
        "zh": "Duet 暂时不接受新的视频请求，请稍后再试。",
    },
    "refused.blocked": {"en": "You cannot submit videos.", "zh": "你无法提交视频。"},
    "refused.cooldown": {"en": "Please wait a moment before your next video.", "zh": "请稍等片刻再提交下一个视频。"},
    "refused.user_limit": {
        "en": "You already have the most videos in progress that you may have. Wait for one to finish or cancel it.",
        "zh": "你进行中的视频已达上限。请等待其中一个完成，或取消一个。",
    },
    "refused.queue_full": {
        "en": "The queue is full right now. Please try again in a few minutes.",
        "zh": "队列已满，请几分钟后再试。",
    },
    "error.unexpected": {
        "en": "Something went wrong on our side. Please try again. (ref {ref})",
        "zh": "我们这边出了点问题，请重试。（参考号 {ref}）",
    },
}


def text(key: str, locale: str | None = "en", **params: object) -> str:
    """The text for `key` in the user's locale (anything not Chinese is English), `params` filled in."""
    return TEXTS[key][normalize_locale(locale)].format(**params)


def error_text(error: BaseException, locale: str | None) -> str:
    """What to tell a user about a refusal: localised for InputError, by reason for SubmitRefused.

    Queue messages of `storage` are English-only on purpose (storage knows no locales), so the known
    refusals are translated here; an unknown DuetError falls back to its user-safe English message.
    """
    if isinstance(error, InputError):
        return error.message(locale)
    if isinstance(error, SubmitRefused):
        key = f"refused.{error.reason}"
        if key in TEXTS and (error.reason != "cooldown" or normalize_locale(locale) == "zh"):
            return text(key, locale)
        return error.user_message
    if isinstance(error, JobNotFound):
        return text("not_found", locale, job_id=error.job_id)
    if isinstance(error, DuetError):
        return error.user_message
    raise TypeError(f"no user text for {type(error).__name__}")


def duration_text(seconds: float, locale: str | None) -> str:
    """“45 s”, “3 min”, “1 h 10 min” — rounded the way a person says a wait."""
    zh = normalize_locale(locale) == "zh"
    seconds = max(0.0, seconds)
    if seconds < 60:
        value = max(1, round(seconds))
        return f"{value} 秒" if zh else f"{value} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} 分钟" if zh else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if zh:
        return f"{hours} 小时" + (f" {minutes} 分钟" if minutes else "")
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def size_text(size_bytes: int) -> str:
    return f"{size_bytes / 1_000_000:.1f} MB"
