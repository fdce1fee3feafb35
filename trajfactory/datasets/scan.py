"""The scan every dataset version passes before it is written: what no row may carry.

- **Control characters** (other than tab, newline, carriage return) and undecodable text (U+FFFD) are removed
  from every string and counted; model-written fields that hold them are refused earlier, where they are made.
- **Host-specific data** is replaced by stable placeholders: absolute paths under this machine's roots (the
  working directory, the home, the host's temp dirs of runs and tests, the trajfactory cache, the installed
  package) become `<WORK>`, `<HOME>`, `<TMP>`, `<CACHE>`, `<PACKAGE>`, and loopback endpoints lose their throwaway ports
  (`http://127.0.0.1:<PORT>/...`).
- **Secrets** are found with detect-secrets (its default plugins) and redacted as `<SECRET:type>`; the seeded demo
  credentials a site declares (its test accounts) are allowed and counted apart.

Diffs a harness applies (`patch`, `bug_patch`, `final_patch`) and the test ids it selects (`FAIL_TO_PASS`,
`PASS_TO_PASS`) are never rewritten: a secret in one (token formats only) flags the row, and the version leaves it out
with a quarantine record. (w3lib 2.3's `test_safe_url_string_url[https://\x80:\x80@example.com-...]` is a test id,
not a credential: redacted, it named no test, and the task's gold patch failed verification from the published rows
with "2 missing".) `scan_tables` returns the cleaned rows,
the flagged rows and a report (counts per rule and table, and examples) that the card shows.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trajfactory.schema import CONTROL_CHARS

CONTROL = CONTROL_CHARS
LOOPBACK = re.compile(r"\b(127\.0\.0\.1|localhost|\[::1\]):\d{2,5}\b")
HOST_TMP = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/(?:pytest-of-[^/\s'\"]+|tmp[\w.-]+|\.?tf-[\w.-]+)")
"""Host temp dirs that runs and tests make (pytest's, `mkdtemp`'s); a sandbox's own /tmp paths are left alone."""
PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
# Binary columns (screenshots) and ids are not text to scan.
SKIP_COLUMNS = {"png", "sha256"}
CODE_COLUMNS = {"patch", "bug_patch", "final_patch"}
"""Diffs that a harness applies: never rewritten (a placeholder would break them). A secret found in one puts its
row in quarantine instead."""
ID_COLUMNS = {"FAIL_TO_PASS", "PASS_TO_PASS"}
"""Lists of the test ids a harness selects: never rewritten either (a placeholder names no test), and scanned as
diffs are."""
PLUGINS = ["ArtifactoryDetector", "AWSKeyDetector", "AzureStorageKeyDetector", "BasicAuthDetector", "CloudantDetector",
           "DiscordBotTokenDetector", "GitHubTokenDetector", "GitLabTokenDetector", "IbmCloudIamDetector",
           "IbmCosHmacDetector", "JwtTokenDetector", "KeywordDetector", "MailchimpDetector", "NpmDetector",
           "OpenAIDetector", "PrivateKeyDetector", "PypiTokenDetector", "SendGridDetector", "SlackDetector",
           "SoftlayerDetector", "SquareOAuthDetector", "StripeDetector", "TelegramBotTokenDetector", "TwilioKeyDetector"]
"""detect-secrets' plugins that look for secrets by their form; its entropy plugins are left out: every commit id,
content hash and screenshot digest of a dataset is a high-entropy string."""
CODE_PLUGINS = [p for p in PLUGINS if p not in ("KeywordDetector", "BasicAuthDetector")]
"""In code, `password = "..."` is a test fixture far more often than a leak: only token formats count there."""


def host_roots() -> list[tuple[str, str]]:
    """(absolute root, placeholder), longest first, for this process's machine."""
    package = Path(__file__).resolve().parents[1]
    cache = Path(os.environ.get("TRAJFACTORY_CACHE") or Path.home() / ".cache" / "trajfactory")
    # the temp dir itself is not a root: a sandbox's own /tmp paths are no host data
    roots = [(str(package), "<PACKAGE>"), (str(cache), "<CACHE>"), (str(Path.cwd()), "<WORK>"),
             (str(Path.home()), "<HOME>")]
    roots = [(r.rstrip("/"), p) for r, p in roots if r not in ("", "/")]
    return sorted(dict(roots).items(), key=lambda rp: -len(rp[0]))


def expand(text: str) -> str:
    """A placeholder path (`<CACHE>/envs/...`) back to this machine's path: how a local environment named in a
    row is found again."""
    for root, placeholder in host_roots():
        if text.startswith(placeholder):
            return root + text[len(placeholder):]
    return text


@dataclass
class ScanReport:
    counts: Counter = field(default_factory=Counter)
    """(rule, table) -> number of strings changed."""
    examples: dict[str, str] = field(default_factory=dict)
    """rule -> one redacted example, for the card."""
    allowed: Counter = field(default_factory=Counter)
    """Declared demo credentials seen (kept)."""

    def rows(self) -> list[dict[str, Any]]:
        out = [{"rule": rule, "table": table, "strings": n} for (rule, table), n in sorted(self.counts.items())]
        out += [{"rule": "declared demo credential (kept)", "table": table, "strings": n}
                for table, n in sorted(self.allowed.items())]
        return out or [{"rule": "(nothing found)", "table": "", "strings": 0}]


class Scanner:
    """Cleans strings and records what it changed; `allowed` are secrets a site declares (its demo accounts)."""

    def __init__(self, allowed: Iterable[str] = (), roots: list[tuple[str, str]] | None = None):
        self.allowed = {a for a in allowed if a}
        self.roots = roots if roots is not None else host_roots()
        self.report = ScanReport()
        self._secret_cache: dict[str, list[tuple[str, str]]] = {}

    def _secrets(self, line: str, plugins: list[str] = PLUGINS) -> list[tuple[str, str]]:
        """(type, the whole token holding the secret) found in one line."""
        key = (line, len(plugins))
        if key not in self._secret_cache:
            from detect_secrets.core.scan import scan_line
            from detect_secrets.settings import transient_settings

            with transient_settings({"plugins_used": [{"name": n} for n in plugins]}):
                found = [(s.type, s.secret_value or "") for s in scan_line(line)]
            tokens = []
            for kind, value in found:
                at = line.find(value) if value else -1
                if at < 0:
                    continue
                # some detectors report only a token's prefix (`ghp`): redact the whole token around it
                m = re.match(r"[^\s'\"`]*", line[at:])
                start = at - len(re.search(r"[^\s'\"`=:]*$", line[:at]).group(0))
                tokens.append((kind, line[start:at + len(m.group(0))]))
            self._secret_cache[key] = tokens
        return self._secret_cache[key]

    def code(self, value: str, table: str) -> list[str]:
        """The secrets (by type) in a diff that must stay byte for byte; the diff itself is left alone."""
        return self._kept([line for line in value.splitlines() if line[:1] in "+-"], table, "a diff")

    def ids(self, tests: list, table: str) -> list[str]:
        """The secrets (by type) in test ids that must stay byte for byte; the ids themselves are left alone."""
        return self._kept([t for t in tests if isinstance(t, str)], table, "a test id")

    def _kept(self, lines: list[str], table: str, where: str) -> list[str]:
        """The token-format secrets (by type) in `lines` of text published byte for byte, counted."""
        found = sorted({kind for line in lines if len(line) < 2000
                        for kind, secret in self._secrets(line, CODE_PLUGINS) if secret not in self.allowed})
        for kind in found:
            self._count(f"secret in {where} ({kind}): row quarantined", table, kind)
        return found

    def text(self, value: str, table: str) -> str:
        original = value
        if CONTROL.search(value):
            value = CONTROL.sub("", value)
            self._count("control characters removed", table, original)
        before = value
        for root, placeholder in self.roots:
            value = value.replace(root + "/", placeholder + "/").replace(root, placeholder) if root in value else value
        value = HOST_TMP.sub("<TMP>", value)
        value = LOOPBACK.sub(r"\1:<PORT>", value)
        if value != before:
            self._count("host path or loopback port replaced", table, value)
        if "PRIVATE KEY-----" in value:  # the whole PEM block, not only the line a detector reports
            value, n = PEM.subn("<SECRET:Private Key>", value)
            if n:
                self._count("secret redacted (Private Key)", table, value)
        if len(value) < 200_000 and re.search(r"[A-Za-z0-9+/=_\-]{8,}", value):
            for kind, secret in {s for line in value.splitlines() for s in self._secrets(line)}:
                if secret in self.allowed:
                    self.report.allowed[table] += 1
                    continue
                value = value.replace(secret, f"<SECRET:{kind}>")
                self._count(f"secret redacted ({kind})", table, value)
        return value

    def _count(self, rule: str, table: str, example: str) -> None:
        self.report.counts[(rule, table)] += 1
        self.report.examples.setdefault(rule, example[:160])

    def value(self, value: Any, table: str) -> Any:
        if isinstance(value, str):
            return self.text(value, table)
        if isinstance(value, list):
            return [self.value(v, table) for v in value]
        if isinstance(value, dict):  # keys too: the lineage's sources map is keyed by URI, a local path among them
            return {(self.text(k, table) if isinstance(k, str) else k):
                    v if k in SKIP_COLUMNS or k in CODE_COLUMNS or k in ID_COLUMNS else self.value(v, table)
                    for k, v in value.items()}
        return value

    def row(self, row: dict, table: str) -> tuple[dict, list[str]]:
        """A cleaned row, and the secrets found in its diffs (non-empty: the row must not be published)."""
        found = [f"{k}: {kind}" for k in CODE_COLUMNS if isinstance(row.get(k), str)
                 for kind in self.code(row[k], table)]
        found += [f"{k}: {kind}" for k in ID_COLUMNS if isinstance(row.get(k), (list, tuple))
                  for kind in self.ids(list(row[k]), table)]
        return self.value(row, table), found


def scan_tables(tables: dict[str, list[dict]], allowed: Iterable[str] = (), scanner: Scanner | None = None
                ) -> tuple[dict[str, list[dict]], dict[tuple[str, int], list[str]], ScanReport]:
    """Every row of every table scanned and cleaned: (clean tables, {(table, row index): secrets in its diffs},
    the report of what was changed)."""
    scanner = scanner or Scanner(allowed)
    clean: dict[str, list[dict]] = {}
    flagged: dict[tuple[str, int], list[str]] = {}
    for name, rows in tables.items():
        clean[name] = []
        for i, row in enumerate(rows):
            row, found = scanner.row(row, name)
            clean[name].append(row)
            if found:
                flagged[(name, i)] = found
    return clean, flagged, scanner.report
