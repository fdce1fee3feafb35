"""Splits without leakage (near-duplicates out, whole groups per split) and the scan every version passes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from trajfactory.datasets import splits
from trajfactory.datasets.publish import _drop_flagged
from trajfactory.datasets.scan import Scanner, expand, scan_tables

# Real test ids of `inflection` 0.5.1 (its own suite), the way the template statement lists them.
INFLECTION_TESTS = [
    "test_pluralize_plural[cow-kine]", "test_pluralize_singular[cow-kine]", "test_singularize_plural[cow-kine]",
    "test_pluralize_plural[person-people]", "test_camelize[Camel-camel]", "test_underscore[CamelCase-camel_case]",
    "test_titleize[man from the boondocks-Man From The Boondocks]", "test_ordinal[1-st]", "test_ordinal[2-nd]",
    "test_parameterize[Donald E. Knuth-donald-e-knuth]", "test_humanize[employee_salary-Employee salary]",
    "test_dasherize[street_address-street-address]", "test_tableize[fancy_category-fancy_categories]",
]
FUNCTIONS = ["pluralize", "singularize", "camelize", "underscore", "titleize", "ordinal", "parameterize", "humanize",
             "dasherize", "tableize"]


def statement(tests: list[str]) -> str:
    listed = "\n".join(f"- `test_inflection.py::{t}`" for t in tests)
    return (f"Some tests of `inflection` fail on the current code:\n\n{listed}\n\nThey passed before a recent change "
            "to the library's source. Find the defect in the library code and fix it so that these tests pass "
            "again, without breaking other tests. Do not modify the tests.")


def corpus(seed: int = 0) -> list[splits.Item]:
    """Forty tasks on ten functions of one repository: template statements (a shared frame), some statements shared
    by tasks on different functions, and two exact re-findings of one bug."""
    rng = random.Random(seed)
    items = []
    cases = ["cow-kine", "person-people", "octopus-octopi", "Camel-camel", "1-st", "employee_salary-Employee salary"]
    for n in range(40):
        fn = FUNCTIONS[n % len(FUNCTIONS)]
        own = [f"test_{fn}[{c}]" for c in cases]  # a function's tasks fail its own tests
        tests = rng.sample(own, 2) if n % 7 else INFLECTION_TESTS[:3]  # every 7th: one text shared across functions
        fix = f"-    return {fn}_rules[{n}](word)\n+    return {fn}_rules[{n}](word, {rng.random():.6f})"
        items.append(splits.Item(f"t{n:03d}", statement(tests), fix, f"inflection:inflection/__init__.py::{fn}"))
    same = items[5]
    items.append(splits.Item("t900", same.statement, same.fix, same.group))  # the same problem with the same fix
    items.append(splits.Item("t901", same.statement + "\n", same.fix + "  ", same.group))
    return items


def test_near_duplicates_are_removed_and_recorded():
    items = corpus()
    kept, clusters = splits.dedup(items)
    assert clusters == [["t005", "t900", "t901"]]
    assert {i.id for i in kept} == {i.id for i in items} - {"t900", "t901"}
    # one shared statement is no near-duplicate: the fixes differ
    assert {"t000", "t007", "t014"} <= {i.id for i in kept}


def test_splits_are_by_group_deterministic_and_leak_free():
    kept, _ = splits.dedup(corpus())
    split_of = splits.assign(kept, seed=0)
    assert split_of == splits.assign(kept, seed=0)  # deterministic by seed
    assert set(split_of.values()) == {"train", "validation", "test"}
    counts = {s: list(split_of.values()).count(s) for s in splits.SPLITS}
    assert counts["train"] > counts["validation"] and counts["train"] > counts["test"]
    group_of = splits.groups(kept)
    for a in kept:  # whole groups: a function's tasks never straddle two splits
        for b in kept:
            if a.group == b.group or group_of[a.id] == group_of[b.id]:
                assert split_of[a.id] == split_of[b.id]
    # tasks sharing one statement (on different functions) landed together
    shared = [i.id for i in kept if i.statement == statement(INFLECTION_TESTS[:3])]
    assert len(shared) >= 5 and len({split_of[i] for i in shared}) == 1
    assert splits.leaks(kept, split_of) == []
    # the check can fail: a random split of the same tasks leaks
    rnd = {i.id: random.Random(i.id).choice(splits.SPLITS) for i in kept}
    assert splits.leaks(kept, rnd)


def test_another_seed_gives_another_assignment_of_the_same_groups():
    kept, _ = splits.dedup(corpus())
    assignments = {tuple(sorted(splits.assign(kept, seed=s).items())) for s in range(6)}
    assert len(assignments) > 1


def test_web_twins_go_with_their_originals_and_empty_fixes_match_nothing():
    items = []
    for n in range(12):
        words = f"Tutorial {n}: open the {['cart', 'thread', 'issue'][n % 3]} page number {n} and change setting {n}"
        checks = f'[{{"table": "t{n}", "where": {{"id": {n}}}}}]'
        items.append(splits.Item(f"w{n:02d}", words, checks, f"forum:tut{n}", kind="web"))
        items.append(splits.Item(f"w{n:02d}x", words + " on a site without it", "", f"forum:tut{n}", kind="web"))
    kept, clusters = splits.dedup(items)
    assert clusters == [] and len(kept) == 24  # twins share a text but not a fix: no duplicates
    split_of = splits.assign(kept, seed=1)
    assert all(split_of[f"w{n:02d}"] == split_of[f"w{n:02d}x"] for n in range(12))
    assert len(set(split_of.values())) == 3  # empty fixes did not glue every twin into one group


# ---------------------------------------------------------------- the scan

GH = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
AWS = "AKIA" + "QYLPMN5HHHFPZAM2"
SLACK = "https://hooks.slack.com/services/" + "T0A1B2C3D/B0A1B2C3D/abcdefghijABCDEFGHIJ1234"
PRIVATE = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAv0\n-----END RSA PRIVATE KEY-----"


def page(home: Path, work: Path) -> str:
    """A how-to page the way blogs write them: config snippets with real-looking keys, the author's paths, a local
    dev server, and bytes a broken copy-paste left in."""
    return (
        "## Deploying the bot\n\nExport your token first:\n\n```bash\nexport GITHUB_TOKEN=" + GH + "\n"
        f"aws configure set aws_access_key_id {AWS}\n```\n\nThen post to Slack at {SLACK} .\n\n"
        f"Your key lives in {home}/.ssh/id_rsa and looks like\n\n```\n{PRIVATE}\n```\n\n"
        f"Open http://127.0.0.1:40927/forum/login or http://localhost:8000/ and run `ls {work}/build`.\n"
        "db_password = 'correct-horse-battery'\nLogin as bruno with the password ember-4878.\x00\x1b[31m\ufffd\n"
    )


def test_scan_redacts_secrets_and_replaces_host_data_in_a_real_looking_page(tmp_path):
    home, work = Path.home(), Path.cwd()
    rows = {"trajectories": [{"trajectory_id": "t1", "task_id": "w1", "messages": [
        {"role": "user", "content": page(home, work)}, {"role": "assistant", "content": "click('12')"}]}]}
    clean, flagged, report = scan_tables(rows, allowed=["ember-4878"])
    text = clean["trajectories"][0]["messages"][0]["content"]
    for secret in (GH, AWS, SLACK.rsplit("/", 1)[1], "MIIEowIBAAKCAQEAv0", "correct-horse-battery"):
        assert secret not in text, secret
    for tag in ("<SECRET:GitHub Token>", "<SECRET:AWS Access Key>", "<SECRET:Slack Token>", "<SECRET:Secret Keyword>",
                "<SECRET:Private Key>"):
        assert tag in text, tag
    assert str(home) not in text and "<HOME>/.ssh/id_rsa" in text and "<WORK>/build" in text
    assert "127.0.0.1:<PORT>/forum/login" in text and "localhost:<PORT>/" in text and "40927" not in text
    assert "\x00" not in text and "\x1b" not in text and "\ufffd" not in text
    assert "ember-4878" in text  # the site's declared demo credential is kept
    assert flagged == {}
    rules = {r["rule"] for r in report.rows()}
    assert {"control characters removed", "host path or loopback port replaced"} <= rules
    assert any(r.startswith("secret redacted (GitHub Token)") for r in rules)


def test_a_secret_in_a_diff_keeps_the_row_out_and_the_diff_untouched():
    patch = f'--- a/cfg.py\n+++ b/cfg.py\n@@ -1 +1 @@\n-TOKEN = ""\n+TOKEN = "{GH}"\n'
    tables = {
        "tasks": [{"task_id": "a", "patch": patch, "problem_statement": "x"},
                  {"task_id": "b", "patch": "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-password = 'x'\n+password = 'y'\n",
                   "problem_statement": "y"}],
        "trajectories": [{"trajectory_id": "t1", "task_id": "a", "final_patch": ""},
                         {"trajectory_id": "t2", "task_id": "b", "final_patch": ""}],
        "verdicts": [{"verdict_id": "v1", "task_id": "a", "trajectory_id": "t1"}],
        "quarantine": [],
    }
    clean, flagged, _ = scan_tables(tables)
    assert clean["tasks"][0]["patch"] == patch  # byte for byte: a placeholder would break `git apply`
    assert flagged == {("tasks", 0): ["patch: GitHub Token"]}  # a keyword in test code is no secret in a diff
    quarantine = _drop_flagged(clean, flagged)
    assert [q["reason"] for q in quarantine] == ["secret_in_diff"] and GH not in quarantine[0]["detail"]
    assert [t["task_id"] for t in clean["tasks"]] == ["b"]
    assert [t["trajectory_id"] for t in clean["trajectories"]] == ["t2"] and clean["verdicts"] == []


def test_test_ids_are_never_rewritten_and_a_token_in_one_keeps_the_row_out():
    """w3lib 2.3's suite has `test_safe_url_string_url[https://\\x80:\\x80@example.com-...]`: the basic-auth
    detector redacted it, the id named no test, and the task's gold patch failed verification from the published
    rows ("2 missing"); yarl's `http://127.0.0.1:8080` ids lost their ports. 54 tasks of seven packages were hit."""
    basic = "tests/test_url.py::test_safe_url_string_url[https://user:hunter2pass@example.com-https://user@x]"
    port = "tests/test_url_parsing.py::test_url_round_trips[http://127.0.0.1:8080-127.0.0.1-127.0.0.1]"  # yarl's
    tables = {"tasks": [{"task_id": "a", "FAIL_TO_PASS": [basic], "PASS_TO_PASS": ["tests/t.py::test_ok", port],
                         "problem_statement": f"fails: {basic}"},
                        {"task_id": "b", "FAIL_TO_PASS": [f"tests/t.py::test_token[{GH}]"], "PASS_TO_PASS": [],
                         "problem_statement": "y"}],
              "trajectories": [], "verdicts": [], "quarantine": []}
    clean, flagged, _ = scan_tables(tables)
    assert clean["tasks"][0]["FAIL_TO_PASS"] == [basic]
    assert clean["tasks"][0]["PASS_TO_PASS"] == ["tests/t.py::test_ok", port]
    assert "<SECRET:Basic Auth Credentials>" in clean["tasks"][0]["problem_statement"]  # prose is redacted
    assert clean["tasks"][1]["FAIL_TO_PASS"] == [f"tests/t.py::test_token[{GH}]"]
    assert flagged == {("tasks", 1): ["FAIL_TO_PASS: GitHub Token"]}


def test_placeholders_expand_back_to_this_machine():
    scanner = Scanner()
    cache = expand("<CACHE>/envs/textkit")
    assert scanner.text(cache, "tasks") == "<CACHE>/envs/textkit" and cache.endswith("/envs/textkit")
    assert not cache.startswith("<")


@pytest.mark.parametrize("text", ["plain text", "tabs\tand\nnewlines\r\n", "unicode: café — 東京"])
def test_clean_text_is_left_alone(text):
    scanner = Scanner()
    assert scanner.text(text, "t") == text and not scanner.report.counts
