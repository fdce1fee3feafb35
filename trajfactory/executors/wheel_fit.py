"""What a sandbox's Python installs of a wheelhouse the host resolved: wheels' tags and `Requires-Python`, and the
requirements its markers add.

pip chooses for another Python (`--python-version`) only among wheels, and evaluates environment markers for the
Python it runs on, whatever the target: a wheelhouse resolved on the host (3.11) for a 3.9 sandbox misses
`tomli; python_version < "3.11"` (which coverage[toml] wants there) and may hold a wheel built for the host only
(wcwidth 0.9.4's `cp310-abi3`). `wheelhouse.build_wheelhouse` replaces the one (`tags_fit`, `requires_python`) and
adds the other (`missing_for`); `fits` says both of a wheel.
"""

from __future__ import annotations

import zipfile
from collections import deque
from pathlib import Path

from packaging.markers import default_environment
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version


def fits(wheel: Path, target: str) -> bool:
    """Whether Python `target` installs `wheel`: its `Requires-Python` and its file name's tags admit it."""
    spec = requires_python(wheel)
    try:
        if spec and not SpecifierSet(spec).contains(target, prereleases=True):
            return False
    except InvalidSpecifier:
        pass  # pip ignores a malformed one too
    return tags_fit(wheel.name, target)


def tags_fit(filename: str, target: str) -> bool:
    """Whether the interpreter and ABI tags of the wheel `filename` admit CPython `target` (`3.9.2`): `py3` and
    `pyXY` up to it, `cpXY-abi3` up to it (the stable ABI), `cpXY` with its own ABI only at XY. A wheel the host
    chose for itself (wcwidth 0.9.4's `cp310-abi3`) may not install on an older sandbox Python, whatever its
    `Requires-Python` says. The platform tags are the host's, which chose them."""
    try:
        tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return True  # not a wheel's name: pip says what is wrong with it
    want = tuple(int(p) for p in target.split(".")[:2])

    def version(digits: str) -> tuple[int, ...]:
        return (int(digits[0]), int(digits[1:] or 0)) if digits.isdigit() else (99,)

    for tag in tags:
        kind, digits = tag.interpreter[:2], tag.interpreter[2:]
        if kind == "py" and digits[:1] == str(want[0]) and version(digits) <= want:
            return True
        if kind == "cp" and (version(digits) == want or (tag.abi == "abi3" and version(digits) <= want)):
            return True
    return False


def requires_python(wheel: Path) -> str:
    """The `Requires-Python` of a wheel's metadata ('' when it has none)."""
    return next((v for k, v in _metadata(wheel) if k == "requires-python"), "")


def _metadata(wheel: Path) -> list[tuple[str, str]]:
    """The header fields of a wheel's METADATA, names in lower case."""
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if name is None:
            return []
        text = zf.read(name).decode("utf-8", "replace").split("\n\n", 1)[0]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
            if v and not k.startswith((" ", "\t"))]


def target_environment(target: str) -> dict[str, str]:
    """The marker environment of CPython `target` (`3.9.2`) on this machine's platform."""
    env = dict(default_environment())
    env.update(python_version=".".join(target.split(".")[:2]), python_full_version=target,
               implementation_version=target)
    return env


def missing_for(house: Path, requirements: list[str], target: str) -> list[str]:
    """The requirements (`name[extras]` with its specifier) that Python `target` needs, following the markers of the
    wheels of `house` from `requirements`, and that no wheel of `house` provides in a version they allow (a wheel the
    host's resolution chose may be older than what a marker of the target asks for)."""
    env = target_environment(target)
    wheels: dict[str, list[tuple[Version | None, Path]]] = {}
    for w in sorted(house.glob("*.whl")):
        wheels.setdefault(canonicalize_name(w.name.split("-")[0]), []).append((_version(w.name), w))
    queue, seen, missing = deque(), set(), []
    for line in requirements:
        try:
            queue.append((Requirement(line), {""}))
        except InvalidRequirement:
            continue  # pip says what is wrong with it
    while queue:
        req, extras = queue.popleft()
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            continue
        name = canonicalize_name(req.name)
        allowed = [w for v, w in wheels.get(name, []) if v is None or req.specifier.contains(v, prereleases=True)]
        if not allowed:
            missing.append(f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}")
            continue
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for field, value in _metadata(allowed[-1]):
            if field == "requires-dist":
                try:
                    queue.append((Requirement(value), {""} | set(req.extras)))
                except InvalidRequirement:
                    continue
    return sorted(set(missing))


def _version(filename: str) -> Version | None:
    """The version a wheel's file name gives (`name-1.2-py3-none-any.whl`), None where it is no wheel name."""
    try:
        return parse_wheel_filename(filename)[1]
    except (InvalidWheelFilename, InvalidVersion):
        return None
