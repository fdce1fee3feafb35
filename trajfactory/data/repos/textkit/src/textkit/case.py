"""Slugs and case conversion."""

import re
import unicodedata

DEFAULT_SEPARATOR = "-"
ELLIPSIS = "..."
SMALL_WORDS = frozenset({"a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to"})


def slugify(text, separator=DEFAULT_SEPARATOR, max_length=None):
    """Lower-case ASCII slug: ``"Héllo, World!"`` -> ``"hello-world"``.

    With ``max_length`` the slug is cut at the last whole word that fits.
    """
    normalized = unicodedata.normalize("NFKD", text)
    ascii_text = normalized.encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = separator.join(words)
    if max_length is not None and len(slug) > max_length:
        cut = slug.rfind(separator, 0, max_length + 1)
        if cut > 0:
            slug = slug[:cut]
        else:
            slug = slug[:max_length]
    return slug


def camel_to_snake(name):
    """``"parseHTTPResponse"`` -> ``"parse_http_response"``."""
    chars = []
    for index, char in enumerate(name):
        if char.isupper():
            previous = name[index - 1] if index > 0 else ""
            following = name[index + 1] if index + 1 < len(name) else ""
            starts_word = previous.islower() or previous.isdigit()
            ends_acronym = previous.isupper() and following.islower()
            if starts_word or ends_acronym:
                chars.append("_")
            chars.append(char.lower())
        else:
            chars.append(char)
    return "".join(chars)


def snake_to_camel(name, upper_first=False):
    """``"parse_http_response"`` -> ``"parseHttpResponse"`` (``"ParseHttpResponse"`` with upper_first)."""
    parts = [part for part in name.split("_") if part]
    if not parts:
        return ""
    head = parts[0]
    if upper_first:
        head = head.capitalize()
    else:
        head = head.lower()
    return head + "".join(part.capitalize() for part in parts[1:])


def title_case(text):
    """Headline capitalisation: small words stay lower-case unless they are first or last."""
    words = text.split()
    last = len(words) - 1
    result = []
    for index, word in enumerate(words):
        lower = word.lower()
        if 0 < index < last and lower in SMALL_WORDS:
            result.append(lower)
        else:
            result.append(lower[:1].upper() + lower[1:])
    return " ".join(result)


def truncate(text, width, placeholder=ELLIPSIS):
    """Shorten ``text`` to at most ``width`` characters, ending with ``placeholder`` when cut."""
    if width < len(placeholder):
        raise ValueError(f"width must be at least {len(placeholder)}, got {width}")
    if len(text) <= width:
        return text
    keep = width - len(placeholder)
    return text[:keep].rstrip() + placeholder
