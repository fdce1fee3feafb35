"""HTML pieces the bundled apps share: escaping, the site style, accessible form fields, tables."""

from __future__ import annotations

import html
from typing import Any

CSS = """body{font-family:sans-serif;margin:0}header{display:flex;gap:1em;align-items:center;
padding:.5em 1em;background:#234;color:#fff}header a{color:#fff}nav ul{display:flex;gap:1em;
list-style:none;margin:0;padding:0}main{padding:1em;max-width:60em}.error{color:#b00}
[role=alert]{border:1px solid #b00;padding:.5em}table{border-collapse:collapse}td,th{padding:.3em
.6em;border-bottom:1px solid #ccc;text-align:left}footer{padding:1em;color:#666}"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def field_html(label: str, name: str, value: str = "", error: str = "", kind: str = "text",
               required: bool = False, textarea: bool = False, extra: str = "") -> str:
    """A labelled input whose error is tied to it (`aria-invalid`, `aria-describedby`)."""
    fid = f"f-{name}"
    attrs = f'id="{fid}" name="{esc(name)}"' + (" required" if required else "") + (f" {extra}" if extra else "")
    if error:
        attrs += f' aria-invalid="true" aria-describedby="{fid}-error"'
    control = (f"<textarea {attrs} rows=5>{esc(value)}</textarea>" if textarea
               else f'<input type="{kind}" {attrs} value="{esc(value)}">')
    err = f'<span class="error" id="{fid}-error">{esc(error)}</span>' if error else ""
    return f'<p><label for="{fid}">{esc(label)}</label> {control} {err}</p>'


def select_html(label: str, name: str, options: list[tuple[str, str]], selected: str = "",
                error: str = "", fid: str = "") -> str:
    fid = fid or f"f-{name}"
    opts = "".join(f'<option value="{esc(v)}"{" selected" if v == selected else ""}>{esc(t)}</option>'
                   for v, t in options)
    err = f'<span class="error" id="{fid}-error">{esc(error)}</span>' if error else ""
    inv = f' aria-invalid="true" aria-describedby="{fid}-error"' if error else ""
    return f'<p><label for="{fid}">{esc(label)}</label> <select id="{fid}" name="{esc(name)}"{inv}>{opts}</select> {err}</p>'


def error_summary(errors: dict[str, str], heading: str = "Please fix the following errors") -> str:
    if not errors:
        return ""
    items = "".join(f"<li>{esc(e)}</li>" for e in errors.values())
    return f'<div role="alert"><h2>{esc(heading)}</h2><ul>{items}</ul></div>'


def table_html(caption: str, headers: list[str], rows: list[list[str]]) -> str:
    """Rows hold ready HTML (callers escape their text)."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
