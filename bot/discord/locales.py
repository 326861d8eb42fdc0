"""Simplified Chinese for what the Discord client shows before the bot says anything: command and option
descriptions and choice names. Discord picks them by the person's client language (`zh-CN`, `zh-TW`);
everything the bot says afterwards comes from bot/core/texts.py in the interaction's locale.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.core.errors import normalize_locale

ZH: dict[str, str] = {
    # commands
    "Make a video of two people talking: two photos and a dialogue": "用两张照片和一段对话制作两个人对话的视频",
    "Your videos, newest first": "我的视频（最新在前）",
    "One of your videos: its status, with Cancel or Re-roll": "查看一个视频的状态，可取消或重新生成",
    "Stop a video (your newest one if no id is given)": "取消视频（不填编号则取消最新的一个）",
    "All voices": "全部声音",
    "Admin: queue statistics": "管理员：队列统计",
    "Admin: stop taking new videos and starting jobs": "管理员：暂停接收新视频和开始新任务",
    "Admin: take videos and start jobs again": "管理员：恢复接收视频和开始任务",
    # options of /talk, /show, /cancel
    "Person A: stands left and speaks the A lines": "人物 A：在左侧，说 A 的台词",
    "Person B: stands right and speaks the B lines": "人物 B：在右侧，说 B 的台词",
    "The dialogue (leave empty to type it in a form with line breaks)": "对话（留空则在可换行的表单中填写）",
    "The dialogue as a .txt file": "对话的 .txt 文件",
    "A few words about the scene, e.g. two friends in a café": "用几句话描述场景，例如两个朋友在咖啡馆",
    "Voice of person A": "人物 A 的声音",
    "Voice of person B": "人物 B 的声音",
    "Language of the dialogue": "对话的语言",
    "Video quality": "视频质量",
    "A number to repeat a result": "用于重现结果的数字",
    "The job id (see /jobs)": "任务编号（见 /jobs）",
    # choices
    "Automatic": "自动",
    "720p (best)": "720p（最佳）",
    "480p (faster)": "480p（更快）",
}


_NAMES = {
    app_commands.TranslationContextLocation.command_name,
    app_commands.TranslationContextLocation.group_name,
    app_commands.TranslationContextLocation.parameter_name,
}


class DuetTranslator(app_commands.Translator):
    """English as written in bot/discord/commands.py; Chinese from `ZH`. Names stay English (a
    command is typed the same everywhere)."""

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContext
    ) -> str | None:
        if normalize_locale(locale.value) != "zh" or context.location in _NAMES:
            return None
        return ZH.get(string.message)
