"""The harness's seal and its audit hook against real pytest runs on the host: a record changed after the plugin
wrote it no longer matches its seal, and a sealed run records the checkout's reaches into the interpreter."""

import os
import subprocess
import sys
import textwrap

from test_testrun import _project  # the small project the harness's tests run on
from trajfactory.executors.testrun import HARNESS_FILES, PLUGIN, SEAL_MARK, check_seal, parse_reaches, parse_results


def _sealed_run(tmp_path, key: bytes) -> tuple[bytes, str]:
    """pytest on the host with the harness and a seal key, as `run_tests` runs it: (the record's bytes, stdout)."""

    plugin_dir = tmp_path / "harness"
    plugin_dir.mkdir(exist_ok=True)
    for name, text in HARNESS_FILES.items():
        (plugin_dir / name).write_text(text)
    (tmp_path / "seal.key").write_bytes(key)
    results = tmp_path / "results.jsonl"
    results.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(plugin_dir), "TRAJFACTORY_RESULTS": str(results),
           "TRAJFACTORY_SEAL": str(tmp_path / "seal.key")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q",
                           f"--rootdir={tmp_path}", "tests"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert not (tmp_path / "seal.key").exists()  # read and deleted before any test could read it
    return results.read_bytes(), proc.stdout


def test_the_seal_holds_the_record_exactly_as_the_harness_wrote_it(tmp_path):
    _project(tmp_path)
    key = b"k" * 32
    record, out = _sealed_run(tmp_path, key)
    assert out.count(SEAL_MARK) == 1 and out.rstrip().splitlines()[-1].startswith(SEAL_MARK)
    assert check_seal(key, record, out) == (True, "")
    assert parse_results(record.decode())[0]["tests/test_calc.py::test_fails"] == "failed"
    # a record appended after the harness's, or the record rewritten: no longer what was sealed
    forged = record + b'{"test": "tests/test_calc.py::test_fails", "outcome": "passed"}\n'
    sealed, why = check_seal(key, forged, out)
    assert not sealed and "is not what the harness wrote" in why
    sealed, why = check_seal(key, record.replace(b'"failed"', b'"passed"'), out)
    assert not sealed and "is not what the harness wrote" in why
    # a seal made without the key does not count; an ended session without a seal is not trusted either
    fake = f"{SEAL_MARK} {'0' * 64} {len(forged)}\n"
    assert not check_seal(key, forged, out + fake)[0]
    sealed, why = check_seal(key, record, "1 failed, 4 passed")
    assert not sealed and "seal is missing" in why
    # worst outcome wins even where the record itself was appended to: a later "passed" never undoes a failure
    assert parse_results(forged.decode())[0]["tests/test_calc.py::test_fails"] == "failed"


def test_a_record_rewritten_when_the_process_exits_breaks_the_seal(tmp_path):
    """A test module that registers an exit handler rewriting every failure in the record to a pass: the handler runs
    after the harness sealed the record, so the rewritten record no longer matches; a session that exits early
    leaves no seal and says so by its missing end, not by a complaint."""
    _project(tmp_path)
    (tmp_path / "tests" / "test_rewrite.py").write_text(textwrap.dedent("""
        import atexit, os

        def _rewrite(path=os.environ["TRAJFACTORY_RESULTS"]):
            text = open(path).read()
            open(path, "w").write(text.replace('"failed"', '"passed"').replace('"error"', '"passed"'))

        atexit.register(_rewrite)

        def test_here():
            pass
    """))
    key = b"s" * 32
    record, out = _sealed_run(tmp_path, key)
    assert b'"failed"' not in record  # the rewrite happened
    sealed, why = check_seal(key, record, out)
    assert not sealed and "is not what the harness wrote" in why
    (tmp_path / "tests" / "test_rewrite.py").write_text("import os\nos._exit(0)\n")
    record, out = _sealed_run(tmp_path, key)
    assert SEAL_MARK not in out and check_seal(key, record, out) == (False, "")


def test_a_sealed_run_records_reaches_into_the_interpreter_however_the_code_spells_them(tmp_path):
    """The harness's audit hook sees `gc.get_objects()` hidden behind `getattr` and string joins, a frame taken by code
    run from a string or through `inspect`, and a function's code replaced (an assertion made a no-op), each at the
    checkout line that did it; a frame the standard library's logging takes for a test is not the test's reach."""
    _project(tmp_path)
    (tmp_path / "pkg" / "sneak.py").write_text(
        "\nimport importlib, inspect, sys, unittest\n\n"
        "_gc = importlib.import_module('g' + 'c')\n"
        "_all = getattr(_gc, 'get_' + 'objects')()\n"
        "exec(\"import sys\\n_fr = getattr(sys, '_get' + 'frame')()\")\n"
        "setattr(unittest.TestCase.assertEqual, '__co' + 'de__', (lambda self, *a, **k: None).__code__)\n"
        "_here = inspect.currentframe()\n")
    (tmp_path / "tests" / "test_sneak.py").write_text(textwrap.dedent("""
        import logging
        import pkg.sneak

        def test_log():
            logging.getLogger("x").warning("w")
        """))
    record, out = _sealed_run(tmp_path, b"k" * 32)
    assert check_seal(b"k" * 32, record, out) == (True, "")
    reaches = {(r["file"], r["line"], r["reach"]) for r in parse_reaches(record.decode())}
    assert reaches == {("pkg/sneak.py", 5, "the garbage collector's listing"), ("pkg/sneak.py", 6, "a stack frame"),
                       ("pkg/sneak.py", 7, "a function's code"), ("pkg/sneak.py", 8, "a stack frame")}, reaches
    assert parse_results(record.decode())[0]["tests/test_sneak.py::test_log"] == "passed"
    # unsealed runs (the reference run, validation) are not watched
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "harness"), "TRAJFACTORY_RESULTS": str(tmp_path / "plain.jsonl")}
    subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q", f"--rootdir={tmp_path}",
                    "tests"], cwd=tmp_path, capture_output=True, env=env)
    plain = (tmp_path / "plain.jsonl").read_text()
    assert '"tests/test_sneak.py::test_log"' in plain and not parse_reaches(plain)
