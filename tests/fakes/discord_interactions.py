"""The `data` a Discord client sends when a person acts: a slash command, typing into an
autocompleted option, pressing a button, picking in a select menu, submitting a modal.

Each builder checks the action against what the bot registered or showed (the command schema,
the components on the stored message, the modal layout) and fails loudly otherwise, because the
real client cannot send an option that does not exist or press a button that is not there.
"""

from __future__ import annotations

from typing import Any

from . import discord_payloads as dp

OPTION_USER, OPTION_ATTACHMENT = 6, 11
COMPONENT_ACTION_ROW, COMPONENT_BUTTON, COMPONENT_STRING_SELECT = 1, 2, 3
COMPONENT_TEXT_INPUT, COMPONENT_LABEL = 4, 18


def slash_command_data(command: dict[str, Any], options: dict[str, Any], *, joined_at: str) -> dict[str, Any]:
    """APPLICATION_COMMAND data; attachment (dict) and user (`FakeUser`) values go to `resolved`."""
    schema = {option["name"]: option for option in command.get("options", [])}
    resolved: dict[str, dict[str, Any]] = {}
    wire_options = []
    for name, value in options.items():
        if value is None:  # Discord leaves unset optional options out
            continue
        if name not in schema:
            raise KeyError(f"/{command['name']} has no option {name!r}; registered: {sorted(schema)}")
        kind = schema[name]["type"]
        if kind == OPTION_ATTACHMENT:
            resolved.setdefault("attachments", {})[value["id"]] = value
            value = value["id"]
        elif kind == OPTION_USER:
            user: dp.FakeUser = value
            resolved.setdefault("users", {})[user.id] = user.payload()
            member = user.member_payload(joined_at)
            del member["user"]
            resolved.setdefault("members", {})[user.id] = member
            value = user.id
        wire_options.append({"name": name, "type": kind, "value": value})
    given = {option["name"] for option in wire_options}
    if missing := [n for n, option in schema.items() if option.get("required") and n not in given]:
        raise ValueError(f"/{command['name']} needs {missing}: the Discord client would not send it without them")
    return _command_data(command, wire_options) | ({"resolved": resolved} if resolved else {})


def autocomplete_data(command: dict[str, Any], options: dict[str, Any], focused: str) -> dict[str, Any]:
    """AUTOCOMPLETE data: the options typed so far, `focused` marking the one being typed."""
    types = {option["name"]: option["type"] for option in command.get("options", [])}
    if unknown := set(options) - set(types):
        raise KeyError(f"/{command['name']} has no options {sorted(unknown)}")
    wire_options = [
        {"name": name, "type": types[name], "value": value} | ({"focused": True} if name == focused else {})
        for name, value in options.items()
    ]
    return _command_data(command, wire_options)


def button_data(message: dict[str, Any], custom_id: str) -> dict[str, Any]:
    _shown_component(message, custom_id, COMPONENT_BUTTON)
    return {"custom_id": custom_id, "component_type": COMPONENT_BUTTON}


def select_data(message: dict[str, Any], custom_id: str, values: list[str]) -> dict[str, Any]:
    select = _shown_component(message, custom_id, COMPONENT_STRING_SELECT)
    offered = {option["value"] for option in select.get("options", [])}
    if not set(values) <= offered:
        raise LookupError(f"select {custom_id!r} offers {sorted(offered)}, not {values}")
    return {"custom_id": custom_id, "component_type": COMPONENT_STRING_SELECT, "values": values}


def modal_submit_data(modal: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """MODAL_SUBMIT data: the shown layout reduced to rows/labels carrying the typed values."""
    known = {c["custom_id"] for c in _walk_components(modal["components"]) if c.get("type") == COMPONENT_TEXT_INPUT}
    if unknown := set(values) - known:
        raise KeyError(f"modal {modal['custom_id']!r} has no inputs {sorted(unknown)}; it has {sorted(known)}")
    return {"custom_id": modal["custom_id"], "components": _fill_modal(modal["components"], values)}


def _command_data(command: dict[str, Any], options: list[dict[str, Any]]) -> dict[str, Any]:
    # `guild_id` tells discord.py whether to look the command up among guild or global ones.
    data = {"id": command["id"], "name": command["name"], "type": command.get("type", 1), "options": options}
    if command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    return data


def _shown_component(message: dict[str, Any], custom_id: str, kind: int) -> dict[str, Any]:
    component = next((c for c in _walk_components(message["components"]) if c.get("custom_id") == custom_id), None)
    if component is None or component.get("type") != kind:
        raise LookupError(f"message {message['id']} shows no component {custom_id!r} of type {kind}")
    if component.get("disabled"):
        raise PermissionError(f"component {custom_id!r} is disabled")
    return component


def _walk_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every component in a layout, depth first (rows, labels, containers, sections)."""
    found = []
    for component in components:
        found.append(component)
        found += _walk_components(component.get("components", []))
        if "component" in component:
            found += _walk_components([component["component"]])
    return found


def _fill_modal(components: list[dict[str, Any]], values: dict[str, str]) -> list[dict[str, Any]]:
    filled = []
    for component in components:
        if component["type"] == COMPONENT_ACTION_ROW:
            filled.append({"type": COMPONENT_ACTION_ROW, "components": _fill_modal(component["components"], values)})
        elif component["type"] == COMPONENT_LABEL:
            filled.append({"type": COMPONENT_LABEL, "component": _fill_modal([component["component"]], values)[0]})
        elif component["type"] == COMPONENT_TEXT_INPUT:
            custom_id = component["custom_id"]
            filled.append({"type": COMPONENT_TEXT_INPUT, "custom_id": custom_id, "value": values.get(custom_id, "")})
    return filled
