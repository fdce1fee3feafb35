"""The digest form of a dataset row: what `DatasetStore.content_digest` hashes, so that two runs of one recipe that
made the same data have the same digest.

Two such runs never write the same bytes. What differs from run to run, and what the digest form does about it:

- wall-clock fields (`created_at`, `fetched_at`, `started_at`, `duration_s`) and what is measured with a clock
  (`latency_s`; `cost_usd`, which a GPU-hour price turns into latency times price; the token counts stay), at any
  depth, also inside the JSON-encoded columns of JSON_COLUMNS: dropped (WALL_CLOCK_KEYS);
- the noise in *observation text*, what a sandbox, a site or a test run printed: replaced by placeholders
  (`normalize_text`, RULES): test-run timings (`in 0.15s`, `0.12s call`, `(0:01:05)`), object addresses
  (`at 0x7f...`, any hex number of 8+ digits), mock ids (`id='1403...'`), the temp dirs of pytest
  (`pytest-of-root/pytest-3`) and of `tempfile` (`/tmp/tmpk2j9_x1a`), pids (`pid 4711`) and loopback ports
  (`127.0.0.1:43217`, a site or model server's free port);
- `tutorial_id`, a hash of the tutorial's URL, which for the bundled docs site holds the docs server's throwaway
  port: dropped (PORT_HASH_KEYS); the URL itself stays, as `tutorial_uri`, with the port replaced.

Observation text is the value of OBSERVATION_KEYS at any depth (a step's `observation` and `error`, an
`exit_status`, the `detail`, `refused` and `uri` texts of validations, verdict evidence and quarantine rows, a
tutorial's `tutorial_uri`) and the `content` of `user` and `tool` messages (what the environment told the agent).
Patches, test ids, instructions in their own columns, the agent's own messages and its tool-call arguments are
never normalized: a change there is a change of content, and changes the digest.

Why only the digest: the stored rows keep the real text. An observation is training data, what the agent saw, and
a model trained on it should see real pytest output, not `in <T>s`. No other record id hashes observation text (task
ids hash the repository, commit and patch; trajectory ids the task, the policy and the sample, plus the agent's
actions for web; verdict ids the verifier, task and trajectory), so no other id needs any of this.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

WALL_CLOCK_KEYS = frozenset({"created_at", "fetched_at", "started_at", "duration_s", "latency_s", "cost_usd"})
"""Wall-clock fields and clock measurements, dropped at any depth."""
PORT_HASH_KEYS = frozenset({"tutorial_id"})
"""Hashes of a string that holds a throwaway loopback port, dropped at any depth."""
JSON_COLUMNS = {"tasks": ("validation", "provenance"), "web_tasks": ("provenance",)}
"""String columns that hold JSON objects; decoded so that the rules above reach inside them."""
OBSERVATION_KEYS = frozenset({"observation", "error", "exit_status", "detail", "refused", "uri", "tutorial_uri"})
"""Fields whose text (at any depth below them) is observation text."""
OBSERVATION_ROLES = frozenset({"user", "tool"})
"""Messages whose `content` is observation text."""

RULES: list[tuple[str, re.Pattern[str], str]] = [
    # pytest `in 0.15s`, `0.12s call`, unittest `in 0.001s`, `took 1.5 seconds`: a decimal number of (milli)seconds
    ("timing", re.compile(r"(?<![\w.])\d+\.\d+(?=\s?(?:s|ms|sec|secs|seconds)\b)"), "<T>"),
    # pytest's `in 65.43s (0:01:05)`
    ("elapsed", re.compile(r"(?<=s )\(\d+:\d\d:\d\d(?:\.\d+)?\)"), "(<T>)"),
    # `<function f at 0x7f3a...>`, `<Foo object at 0x55d1...>`, any other 8+ digit hex number
    ("address", re.compile(r"(?<=\bat )0x[0-9a-fA-F]+\b|\b0x[0-9a-fA-F]{8,}\b"), "0x<ADDR>"),
    # `<MagicMock name='f' id='140234117'>`
    ("mock_id", re.compile(r"\bid='\d+'"), "id='<ID>'"),
    # `/tmp/pytest-of-root/pytest-3/test_x0`
    ("pytest_tmp", re.compile(r"pytest-of-[^/\s]+/pytest-\d+"), "pytest-of-<USER>/pytest-<N>"),
    # `tempfile.mkdtemp()`: `/tmp/tmpk2j9_x1a`
    ("tempfile", re.compile(r"(?<=/)tmp[a-z0-9_]{8}(?![A-Za-z0-9_])"), "tmp<RANDOM>"),
    ("pid", re.compile(r"\b(pid|PID|Pid)([ =:]\s*)\d+\b"), r"\1\2<PID>"),
    # a local site's or model server's free port: `http://127.0.0.1:43217/login`
    ("loopback_port", re.compile(r"(?<![\w.])(127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):\d+\b"), r"\1:<PORT>"),
]
"""(name, pattern, replacement), applied in this order."""


def normalize_text(text: str) -> str:
    """`text` with the run-to-run noise of RULES replaced by placeholders."""
    for _, pattern, replacement in RULES:
        text = pattern.sub(replacement, text)
    return text


def digest_form(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """The row as the digest sees it: JSON columns decoded, wall-clock fields dropped, observation text normalized."""
    json_columns = JSON_COLUMNS.get(table, ())
    return _normalize({k: _decode_json(v) if k in json_columns else v for k, v in row.items()})


def row_digest(table: str, row: dict[str, Any]) -> str:
    """sha256 of one row's digest form."""
    blob = json.dumps(digest_form(table, row), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _normalize(value: Any, observed: bool = False) -> Any:
    if isinstance(value, dict):
        told = value.get("role") in OBSERVATION_ROLES
        return {k: _normalize(v, observed or k in OBSERVATION_KEYS or (told and k == "content"))
                for k, v in value.items() if k not in WALL_CLOCK_KEYS and k not in PORT_HASH_KEYS}
    if isinstance(value, list):
        return [_normalize(v, observed) for v in value]
    if observed and isinstance(value, str):
        return normalize_text(value)
    return value


def _decode_json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value
