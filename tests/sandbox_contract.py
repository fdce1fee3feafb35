"""Checks every sandbox backend must pass, called from each backend's test module with its own sandbox."""

from __future__ import annotations

import pytest

from trajfactory.executors.base import READ_LIMIT, FileTooLargeError


def reads_are_capped(sandbox) -> None:
    """A file over the read limit is refused (directly and through a link); smaller ones are read whole."""
    sandbox.execute("head -c 3145728 /dev/zero > /tmp/big && ln -sf big /tmp/link && echo hi > /tmp/small")
    for path in ("/tmp/big", "/tmp/link"):
        with pytest.raises(FileTooLargeError, match=r"3,145,728 bytes, over the read limit of 1,048,576"):
            sandbox.read_file(path, max_bytes=2**20)
    assert sandbox.read_file("/tmp/small", max_bytes=2**20) == b"hi\n"
    assert len(sandbox.read_file("/tmp/big")) == 3 * 2**20  # under the default limit
    sandbox.execute(f"head -c {READ_LIMIT + 1} /dev/zero > /tmp/huge")
    with pytest.raises(FileTooLargeError):
        sandbox.read_file("/tmp/huge")


WARNS = '''\
import warnings

import pytest

# what a newer pytest than the project's says at collection (python-dateutil 2.9.0 under pytest 9)
warnings.warn(pytest.PytestDeprecationWarning("a deprecation the project's pytest did not have"))


def test_quiet():
    pass


def test_own_deprecation():
    warnings.warn(DeprecationWarning("the project's own: its `filterwarnings = error` fails this test"))
'''


def pytest_deprecations_stay_warnings(sandbox) -> None:
    """A project whose configuration turns every warning into an error still collects under a pytest newer than it:
    pytest's own deprecations stay warnings, in the harness's runs and in a plain `python -m pytest` alike, and
    every other warning is still the error the project asked for."""
    from trajfactory.executors.testrun import run_tests

    sandbox.write_file("pytest.ini", "[pytest]\nfilterwarnings =\n    error\n")
    sandbox.write_file("tests/test_warns.py", WARNS)
    run = run_tests(sandbox, None, timeout=120)
    assert run.outcomes["tests/test_warns.py::test_quiet"] == "passed", run.output
    assert run.outcomes["tests/test_warns.py::test_own_deprecation"] == "failed", run.output
    plain = sandbox.execute("python -m pytest -q -p no:cacheprovider tests/test_warns.py", timeout=120)
    assert plain.exit_code == 1 and "1 failed, 1 passed" in plain.output, plain.output
