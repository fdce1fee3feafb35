"""Guess a repository's license from its license file, or else from its packaging metadata; and a local folder's
(a folder of tutorial pages) from a declared `SPDX-License-Identifier:` line or a license file beside it or above it.

The guess is provenance, not legal advice: an SPDX-style id (`MIT`, `Apache-2.0`, ...) when the text
or metadata is recognised, the author's own short wording when it is not, `None` when there is none.
"""

from __future__ import annotations

import configparser
import email.parser
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

LICENSE_FILE = re.compile(r"^(licen[cs]e|copying)([._-].*)?$", re.IGNORECASE)
"""Root-level files that hold a license text: LICENSE, LICENSE.txt, LICENCE.md, COPYING, ..."""

METADATA_FILES = ("pyproject.toml", "setup.cfg", "PKG-INFO", "setup.py")
SPDX_LINE = re.compile(r"^\W*SPDX-License-Identifier:\s*(.+?)\s*(?:-->|\*/)?\s*$", re.IGNORECASE | re.MULTILINE)
"""A declared license expression (`SPDX-License-Identifier: Apache-2.0 AND MIT`), in any comment style."""
README_FILE = re.compile(r"^readme(\.[a-z]+)?$", re.IGNORECASE)
PROJECT_ROOT_MARKERS = (".git", "pyproject.toml", "setup.py", "setup.cfg")

_GPL_VERSION = r"(?:.{0,120}?version (\d(?:\.\d)?))?"
# (pattern on lower-cased, whitespace-collapsed text, SPDX id or a format with the version).
_TEXT_MARKERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"gnu affero general public license" + _GPL_VERSION), "AGPL-{v}"),
    (re.compile(r"gnu (?:lesser|library) general public license" + _GPL_VERSION), "LGPL-{v}"),
    (re.compile(r"gnu general public license" + _GPL_VERSION), "GPL-{v}"),
    (re.compile(r"apache license,? version 2\.0"), "Apache-2.0"),
    (re.compile(r"mozilla public license,? (?:version|v\.) ?2\.0"), "MPL-2.0"),
    (re.compile(r"permission is hereby granted, free of charge"), "MIT"),
    (re.compile(r"permission to use, copy, modify, and(?:/or)? distribute this software for any purpose"), "ISC"),
    (re.compile(r"redistribution and use in source and binary forms"), "BSD"),
    (re.compile(r"python software foundation license"), "PSF-2.0"),
    (re.compile(r"this is free and unencumbered software released into the public domain"), "Unlicense"),
    (re.compile(r"boost software license"), "BSL-1.0"),
]

# (pattern on a lower-cased metadata value such as `MIT License` or a trove classifier, SPDX id).
_NAME_ALIASES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), spdx)
    for p, spdx in [
        (r"\bmit\b", "MIT"),
        (r"apache", "Apache-2.0"),
        (r"\bbsd\b.*\b3\b|\b3-clause|new bsd|modified bsd|revised bsd", "BSD-3-Clause"),
        (r"\bbsd\b.*\b2\b|\b2-clause|simplified bsd|freebsd", "BSD-2-Clause"),
        (r"\bbsd\b", "BSD"),
        (r"affero|\bagpl", "AGPL-3.0"),
        (r"(lesser|library) general public license v3|lgpl-?v?3", "LGPL-3.0"),
        (r"(lesser|library) general public license v2|lgpl-?v?2", "LGPL-2.1"),
        (r"lesser general|library general|\blgpl", "LGPL"),
        (r"general public license v3|\bgpl-?v?3", "GPL-3.0"),
        (r"general public license v2|\bgpl-?v?2", "GPL-2.0"),
        (r"general public license|\bgpl\b", "GPL"),
        (r"mozilla|\bmpl\b", "MPL-2.0"),
        (r"\bisc\b", "ISC"),
        (r"python software foundation|\bpsf\b", "PSF-2.0"),
        (r"unlicense", "Unlicense"),
        (r"boost software", "BSL-1.0"),
    ]
]


def find_license_file(names: list[str]) -> str | None:
    """The root-level license file among `names`; LICENSE beats LICENCE beats COPYING."""
    matches = [n for n in names if LICENSE_FILE.match(n)]
    return min(matches, key=lambda n: (not n.lower().startswith("license"), len(n), n), default=None)


def guess_license(text: str) -> str | None:
    """SPDX id of a license text; when several are quoted, the one whose marker comes first wins."""
    flat = " ".join(text.lower().split())
    best: tuple[int, str] | None = None
    for pattern, spdx in _TEXT_MARKERS:
        match = pattern.search(flat)
        if match and (best is None or match.start() < best[0]):
            name = spdx
            if "{v}" in spdx:
                version = match.group(1)
                if version is None:
                    name = spdx.removesuffix("-{v}")
                else:
                    name = spdx.format(v=version if "." in version else f"{version}.0")
            elif spdx == "BSD":
                name = _bsd_clauses(flat[match.start():])
            best = (match.start(), name)
    return best[1] if best else None


def _bsd_clauses(text: str) -> str:
    if "all advertising materials" in text:
        return "BSD-4-Clause"
    # The third clause forbids using the holders' names to endorse derived products.
    if "neither the name" in text or "endorse or promote" in text:
        return "BSD-3-Clause"
    return "BSD-2-Clause"


def name_from_metadata(value: str) -> str | None:
    """SPDX id of a metadata value (`MIT License`, a trove classifier, a full text); else the value."""
    value = value.strip()
    if not value or value.lower() in {"unknown", "none", "other/proprietary license", "osi approved"}:
        return None
    if len(value) > 200 or "\n" in value:
        return guess_license(value)
    if value.startswith("License ::"):
        value = value.rsplit("::", 1)[1].strip()
    lowered = value.lower()
    for pattern, spdx in _NAME_ALIASES:
        if pattern.search(lowered):
            return spdx
    return value


def license_from_metadata(files: Mapping[str, bytes]) -> str | None:
    """License named by pyproject.toml, setup.cfg, PKG-INFO or setup.py (first that names one)."""
    for name in METADATA_FILES:
        if name not in files:
            continue
        text = files[name].decode("utf-8", "replace")
        try:
            values = _METADATA_READERS[name](text)
        except (ValueError, configparser.Error, TypeError, AttributeError):
            continue  # unreadable metadata is no evidence; the next file may still name a license
        for value in values:
            found = name_from_metadata(value)
            if found:
                return found
    return None


def _pyproject_values(text: str) -> list[str]:
    project = tomllib.loads(text).get("project", {})
    license_ = project.get("license")
    if isinstance(license_, dict):
        license_ = license_.get("text", "")
    values = [license_] if isinstance(license_, str) else []
    return values + [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def _setup_cfg_values(text: str) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    meta = parser["metadata"] if parser.has_section("metadata") else {}
    classifiers = [c.strip() for c in meta.get("classifiers", "").splitlines()]
    return [meta.get("license", "")] + [c for c in classifiers if c.startswith("License ::")]


def _pkg_info_values(text: str) -> list[str]:
    headers = email.parser.HeaderParser().parsestr(text)
    classifiers = [c for c in headers.get_all("Classifier", []) if c.startswith("License ::")]
    return [headers.get("License-Expression", ""), headers.get("License", "")] + classifiers


def _setup_py_values(text: str) -> list[str]:
    return re.findall(r"""\blicense\s*=\s*['"]([^'"\n]+)['"]""", text) + re.findall(
        r"""['"](License :: [^'"\n]+)['"]""", text
    )


_METADATA_READERS = {
    "pyproject.toml": _pyproject_values,
    "setup.cfg": _setup_cfg_values,
    "PKG-INFO": _pkg_info_values,
    "setup.py": _setup_py_values,
}


def folder_license(path: str | Path) -> str | None:
    """The license of a local folder of pages (a file's folder for a file): in the folder, else in each folder above
    it up to the project's root (the first holding .git, pyproject.toml or setup.py/cfg), a license file or README
    that declares `SPDX-License-Identifier: EXPR` gives EXPR, else a license file's text is recognised
    (`guess_license`). None when nothing there says."""
    folder = Path(path).resolve()
    folder = folder if folder.is_dir() else folder.parent
    for here in [folder, *folder.parents]:
        try:
            names = sorted(f.name for f in here.iterdir() if f.is_file())
        except OSError:
            return None
        license_file = find_license_file(names)
        for name in [license_file, *[n for n in names if README_FILE.match(n)]]:
            if name and (m := SPDX_LINE.search(_read(here / name))):
                return m.group(1)
        if license_file and (found := guess_license(_read(here / license_file))):
            return found
        if any((here / marker).exists() for marker in PROJECT_ROOT_MARKERS):
            return None
    return None


def _read(path: Path, limit: int = 200_000) -> str:
    try:
        with path.open("rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""
