"""Mutants of tests that end in one of sqlglot's helpers (`tests/dialects/test_dialect.py`), read from their
definitions (`executors/helper_rules.py`): `validate_identity(sql, write_sql=None)` compares `write_sql or sql`
(`or_params`), `validate_all(sql, write={...})` compares each value of its `write` dict (`item_params`). Where the
definition does not show it, no mutant is made."""

from __future__ import annotations

import ast
import secrets
import unittest

import pytest

from trajfactory.executors.helper_rules import helper_target, item_params, or_params
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import spot_of

from test_mutant_helpers import namespace_def

RNG = secrets.SystemRandom()


# sqlglot's helper, as tests/dialects/test_dialect.py writes it: `write_sql or sql` is compared
VALIDATOR = '''
def validate_identity(self, sql, write_sql=None, pretty=False, check_command_warning=False, identify=False):
    if check_command_warning:
        with self.assertLogs(parser_logger) as cm:
            expression = self.parse_one(sql)
            assert f"'{sql[:100]}' contains unsupported syntax" in cm.output[0]
    else:
        expression = self.parse_one(sql)

    self.assertEqual(
        write_sql or sql, expression.sql(dialect=self.dialect, pretty=pretty, identify=identify)
    )
    return expression
'''


@pytest.mark.parametrize("call,mutant,kind", [
    # no `write_sql`: the helper compared `sql`; `write_sql=(sql,)` is compared instead
    ("self.validate_identity('SELECT 1')", "self.validate_identity('SELECT 1', write_sql=('SELECT 1',))", "add"),
    ("self.validate_identity(f'SELECT {x}', pretty=True)",
     "self.validate_identity(f'SELECT {x}', pretty=True, write_sql=(f'SELECT {x}',))", "add"),
    # a `write_sql` given: changed where it is a string, else wrapped (a tuple is truthy)
    ("self.validate_identity('SELECT 1', 'SELECT 2')", None, "constant"),
    ("self.validate_identity('SELECT 1', write_sql=OUT)", "self.validate_identity('SELECT 1', write_sql=(OUT,))",
     "wrap"),
])
def test_a_helper_that_compares_p_or_q_gets_p(call, mutant, kind):
    validator = namespace_def(VALIDATOR, "validate_identity")
    assert or_params(validator) == {"write_sql": "sql"}
    source = f"def test_x(self):\n    {call}\n"
    spot = spot_of(ast.parse(source).body[0], lambda c: helper_target(c, validator, True))
    assert spot is not None and spot.kind == kind
    out = "".join(mutate(source.splitlines(keepends=True), 1, spot, RNG))
    if mutant is not None:
        assert out.splitlines()[1].strip() == mutant
    else:
        changed = ast.parse(out).body[0].body[0].value.args[1].value
        assert changed.startswith("SELECT 2") and changed != "SELECT 2"


@pytest.mark.parametrize("change", [
    ("write_sql or sql, expression", "write_sql or sql or '', expression"),  # three operands: not `p or q`
    # `p` read twice
    ("        expression = self.parse_one(sql)\n\n", "        expression = self.parse_one(write_sql)\n\n"),
    ("    else:\n", "    else:\n        sql = sql.strip()\n"),  # q bound again
    ("write_sql or sql, expression", "write_sql and sql, expression"),
    ("    if check_command_warning:", "    if pretty:\n        return None\n    if check_command_warning:"),
])
def test_no_p_or_q_mutant_where_the_definition_does_not_show_it(change):
    source = VALIDATOR.replace(*change)
    assert source != VALIDATOR
    validator = namespace_def(source, "validate_identity")
    assert or_params(validator) == {}
    assert spot_of(ast.parse("def test_x(self):\n    self.validate_identity('SELECT 1')\n").body[0],
                   lambda c: helper_target(c, validator, True)) is None


# sqlglot's other helper, as tests/dialects/test_dialect.py writes it: each value of `write` is compared with `sql`
# written in its key's dialect
VALIDATE_ALL = '''
def validate_all(self, sql, read=None, write=None, pretty=False, identify=False):
    expression = self.parse_one(sql)

    for read_dialect, read_sql in (read or {}).items():
        with self.subTest(f"{read_dialect} -> {sql}"):
            self.assertEqual(parse_one(read_sql, read_dialect).sql(self.dialect, pretty=pretty), sql)

    for write_dialect, write_sql in (write or {}).items():
        with self.subTest(f"{sql} -> {write_dialect}"):
            if write_sql is UnsupportedError:
                with self.assertRaises(UnsupportedError):
                    expression.sql(write_dialect, unsupported_level=ErrorLevel.RAISE)
            else:
                self.assertEqual(expression.sql(write_dialect, pretty=pretty, identify=identify), write_sql)
'''


def _validate_all_spot(call: str, source: str = VALIDATE_ALL):
    test = f"def test_x(self):\n    {call}\n"
    return test, spot_of(ast.parse(test).body[0],
                         lambda c: helper_target(c, namespace_def(source, "validate_all"), True))


def test_a_helper_that_compares_each_value_of_a_dict_gets_one_changed():
    """sqlglot's `validate_all` (343 of its 1,504 tests end in one) compares every value of its `write` dict: the
    first string among the values of a `write` literal is changed, else its first value wrapped; a call with no
    `write` gets one, keyed as the module's other calls key it most often. `read`'s values are what it parses, not
    what it compares. Each mutant is run against the helper's own code: it fails where its original passes."""
    assert item_params(namespace_def(VALIDATE_ALL, "validate_all")) == {"write"}
    test, spot = _validate_all_spot("self.validate_all('SELECT 1', read={'hive': 'SELECT 1'}, "
                                    "write={'duckdb': UnsupportedError, 'spark': 'SELECT 1', 'hive': 'SELECT 2'})")
    assert spot.kind == "constant" and spot.node.value == "SELECT 1" and spot.node.col_offset > test.index("write=")
    # no string among the values: the first one is wrapped (a new tuple is no name's object: the helper compares it)
    test, spot = _validate_all_spot("self.validate_all('SELECT 1', write={'duckdb': UnsupportedError})")
    assert spot.kind == "wrap" and ast.unparse(spot.node) == "UnsupportedError"
    # no `write` and no module to take a key from: no mutant
    assert _validate_all_spot("self.validate_all('SELECT 1', read={'hive': 'SELECT 1'})")[1] is None
    # a key given twice: the value under its first is never compared
    assert _validate_all_spot("self.validate_all('SELECT 1', write={'a': 'x', 'a': 'y'})")[1] is None

    class Expression:
        def __init__(self, sql):
            self.sql_text = sql

        def sql(self, dialect, **kw):
            if dialect == "duckdb" and kw.get("unsupported_level") == "raise":
                raise UnsupportedError(dialect)
            return f"{self.sql_text} /* {dialect} */"

    class UnsupportedError(Exception):
        pass

    namespace = {"UnsupportedError": UnsupportedError, "ErrorLevel": type("ErrorLevel", (), {"RAISE": "raise"}),
                 "parse_one": lambda sql, dialect: Expression(sql.split(" /*")[0])}
    exec(compile(VALIDATE_ALL, "<validator>", "exec"), namespace)

    class Case(unittest.TestCase):
        dialect = "hive"
        validate_all = namespace["validate_all"]

        def parse_one(self, sql):
            return Expression(sql)

    calls = ["self.validate_all('SELECT 1 /* hive */', read={'spark': 'SELECT 1 /* spark */'}, "
             "write={'duckdb': UnsupportedError, 'spark': 'SELECT 1 /* hive */ /* spark */'})",  # a value changed
             "self.validate_all('SELECT 1 /* hive */', write={'duckdb': UnsupportedError})",  # wrapped
             "self.validate_all('SELECT 1 /* hive */', read={'spark': 'SELECT 1 /* spark */'})"]  # `write` added
    validator = "class Validator:\n" + "".join(f"    {line}\n" for line in VALIDATE_ALL.splitlines())
    runs = []
    for call in calls:
        # a module whose other test gives `write` with "spark" most often: the key a call with none gets
        source = (f"from tests.validator import Validator\n\n\nclass TestX(Validator):\n\n    def test_x(self):\n"
                  f"        {call}\n\n    def test_y(self):\n"
                  "        self.validate_all('x', write={'spark': 'a', 'hive': 'b'})\n"
                  "        self.validate_all('y', write={'spark': 'c'})\n")
        module = ast.parse(source)
        targets = mutant_targets(module, "tests/test_x.py", {"tests/validator.py": validator}.get)
        spot = spot_of(module.body[1].body[0], targets(["TestX", "test_x"]))
        assert spot is not None
        mutant = "".join(mutate(source.splitlines(keepends=True), 1, spot, RNG))
        if "write=" not in call:
            assert "read={'spark': 'SELECT 1 /* spark */'}, write={'spark': ('SELECT 1 /* hive */',)})" in mutant
        runs += [(source, False), (mutant, True)]
    for source, fails in runs:
        scope = {"UnsupportedError": UnsupportedError, "Validator": Case}
        exec(compile(source.replace("from tests.validator import Validator", ""), "<test>", "exec"), scope)
        result = unittest.TestResult()
        scope["TestX"]("test_x").run(result)
        assert bool(result.failures) is fails, (source, result.failures, result.errors)
        assert not result.errors


@pytest.mark.parametrize("change", [
    ("            else:\n", "                break\n            else:\n"),  # a value may go uncompared
    ("with self.subTest(f\"{sql} -> {write_dialect}\"):", "with contextlib.suppress(AssertionError):"),
    ("if write_sql is UnsupportedError:", "if write_sql == 'unsupported':"),  # not an identity: may differ
    ("expression.sql(write_dialect, unsupported", "expression.sql(write_sql, unsupported"),  # read again
    ("    expression = self.parse_one(sql)\n", "    write = write or {}\n    expression = self.parse_one(sql)\n"),
    ("    expression = self.parse_one(sql)\n",
     "    if pretty:\n        return\n    expression = self.parse_one(sql)\n"),  # a return before the loop
    ("(write or {}).items()", "(write or {}).values()"),
])
def test_no_dict_value_mutant_where_the_definition_does_not_show_it(change):
    source = VALIDATE_ALL.replace(*change)
    assert source != VALIDATE_ALL
    assert item_params(namespace_def(source, "validate_all")) == set()
    assert _validate_all_spot("self.validate_all('SELECT 1', write={'spark': 'SELECT 1'})", source)[1] is None
