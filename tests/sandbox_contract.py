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
