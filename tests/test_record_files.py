"""The record files stages talk through (`schema.write_records` / `read_records`): one JSON object per line."""

from __future__ import annotations

import json

import pytest

from trajfactory.schema import Quarantine
from trajfactory.schema.core import read_records, write_records

# What mistune 3's tests print when they fail, among others: markdown's line and paragraph separators and the C1
# next-line character. JSON leaves them unescaped, and str.splitlines() breaks a line at each of them.
SEPARATORS = "a\u2028b\u2029c\x85d\x1ce\x1df\x1eg\x0bh\x0ci\r\nj"


def test_a_record_holding_unicode_line_separators_reads_back_whole(tmp_path):
    path = tmp_path / "records" / "quarantine-verify.jsonl"
    records = [Quarantine(item_id=f"t{i}", item_kind="trajectory", stage="verify", reason="r",
                          detail=f"E   - - | {SEPARATORS} {i}") for i in range(3)]
    write_records(path, records)
    assert path.read_text(encoding="utf-8").count("\n") == 3
    assert read_records(path, Quarantine) == records


def test_a_bad_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    good = Quarantine(item_id="a", item_kind="task", stage="s", reason="r")
    path.write_text(good.model_dump_json() + "\n" + json.dumps({"item_id": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tasks\.jsonl:2: not a valid Quarantine record"):
        read_records(path, Quarantine)
