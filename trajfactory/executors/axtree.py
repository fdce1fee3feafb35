"""The text of a page the agent reads: Chromium's accessibility tree, BrowserGym-style, with element ids."""

from __future__ import annotations

# roles whose line adds nothing: their children are shown one level up
SKIP_ROLES = {"generic", "none", "presentation", "LabelText", "InlineTextBox", "LineBreak", "ListMarker", "MenuListPopup"}
SHOWN_PROPERTIES = ["focused", "checked", "selected", "expanded", "disabled", "required", "invalid", "readonly", "modal"]
VALUE_ROLES = {"textbox", "searchbox", "combobox", "spinbutton", "slider"}


def render_axtree(nodes: list[dict], bids: dict[int, str]) -> str:
    """BrowserGym-like text of a CDP accessibility tree; `bids` maps backend DOM node id -> data-tf-id."""
    if not nodes:
        return ""
    by_id = {n["nodeId"]: n for n in nodes}
    lines: list[str] = []

    def visit(node: dict, depth: int, parent_name: str) -> None:
        role = node.get("role", {}).get("value", "")
        name = str(node.get("name", {}).get("value", "")).strip()
        children = [by_id[c] for c in node.get("childIds", []) if c in by_id]
        if role in ("InlineTextBox", "ListMarker"):
            return
        shown = not node.get("ignored") and not (role in SKIP_ROLES and not name) and role != "LabelText"
        if role == "StaticText" and (not name or name == parent_name or parent_name == "\0value"):
            shown = False
        if shown:
            bid = bids.get(node.get("backendDOMNodeId", -1))
            line = ("\t" * depth) + (f"[{bid}] " if bid and role != "StaticText" else "") + f"{role} {name!r}"
            props = []
            value = node.get("value", {}).get("value")
            if role in VALUE_ROLES and value not in (None, ""):
                props.append(f"value={str(value)!r}")
            for p in node.get("properties", []):
                v = p.get("value", {}).get("value")
                if p["name"] in SHOWN_PROPERTIES and v not in (False, "false", None, ""):
                    props.append(p["name"] if v is True or v == "true" else f"{p['name']}={v!r}")
                elif p["name"] == "level" and role == "heading":
                    props.append(f"level={v}")
            lines.append(line + (", " + ", ".join(props) if props else ""))
        for child in children:
            # the text inside an input repeats its value: "\0value" tells its StaticText child to hide
            visit(child, depth + 1 if shown else depth,
                  "\0value" if role in VALUE_ROLES else name if shown else parent_name)

    roots = [n for n in nodes if "parentId" not in n] or nodes[:1]
    for root in roots:
        visit(root, 0, "")
    return "\n".join(lines)
