"""The harness's audit hook: the checkout's reaches into the interpreter, written to the sealed record at once.

Part of the factory's pytest plugin (`pytest_harness.py`): `testrun.HARNESS_FILES` copies it into the sandbox beside
the plugin as `trajfactory_harness_reaches.py`, outside the checkout, and the plugin imports it when a run is sealed,
before pytest imports any module of the checkout. A new module of a patch named like it is refused
(`guard.py`). Standard library only.
"""

from __future__ import annotations

import os
import sys

# Reaches into the interpreter that Python's audit hooks report however the code names them (`getattr(gc, "get_" +
# "objects")` raises the same event as `gc.get_objects()`): the event -> what it reaches.
_REACHES = {"gc.get_objects": "the garbage collector's listing", "gc.get_referrers": "the garbage collector's listing",
            "gc.get_referents": "the garbage collector's listing", "sys._getframe": "a stack frame",
            "sys._current_frames": "the stack frames", "sys.settrace": "a trace function",
            "sys.setprofile": "a profile function", "sys.addaudithook": "an audit hook"}
_READS = {"tb_frame": "a stack frame", "gi_frame": "a stack frame", "cr_frame": "a stack frame",
          "ag_frame": "a stack frame"}  # the attribute reads the interpreter audits that reach a frame
_THROUGH = ("inspect.py", "traceback.py")  # the standard library's thin wrappers of frames: the caller is the reacher


def watch_reaches(write) -> None:
    """A sealed run's audit hook (it cannot be removed): each reach into the interpreter (`_REACHES`, `_READS`, a
    function's code replaced, a class from outside the checkout changed where the interpreter audits it (`__bases__`,
    `__name__`, `__module__`, `__doc__`), ctypes) made by code in the checkout is written to the record at once,
    `{"reach", "event", "file", "line"}`, before the code that reached can do anything with it.
    Code run from a string, and the standard library's frame helpers, count as their caller. The host refuses a
    reach from a line the patch added (`guard.run_time_reaches`); the project's own code and tests may reach."""
    import sysconfig
    import threading

    root = os.path.realpath(os.getcwd()) + os.sep
    stdlib = tuple({os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")})
    kinds: dict = {}
    seen: set = set()
    busy = threading.local()  # per thread: the hook's own `sys._getframe` call must not report itself

    def kind(filename: str) -> str:
        if filename not in kinds:
            path = "" if filename.startswith("<") else os.path.realpath(filename)
            if not path or (path.startswith(stdlib) and os.path.basename(path) in _THROUGH):
                kinds[filename] = "through"
            elif path.startswith(root) and "site-packages" not in path and not path.startswith(stdlib):
                kinds[filename] = "checkout"
            else:
                kinds[filename] = "other"
        return kinds[filename]

    def what(event: str, args: tuple):
        if event in _REACHES:
            return _REACHES[event]
        if event == "object.__getattr__" and len(args) > 1:
            return _READS.get(args[1])
        if event in ("object.__setattr__", "object.__delattr__") and len(args) > 1:
            if args[1] == "__code__":
                return "a function's code"
            cls = args[0]
            if isinstance(cls, type):
                module = sys.modules.get(getattr(cls, "__module__", ""))
                if kind(getattr(module, "__file__", None) or "<builtin>") != "checkout":
                    return f"the class {cls.__module__}.{cls.__qualname__}"
        if event.startswith("ctypes."):
            return "raw memory (ctypes)"
        return None

    def hook(event: str, args: tuple) -> None:
        if getattr(busy, "on", False) or (event not in _REACHES and not event.startswith(("object.", "ctypes."))):
            return
        busy.on = True
        try:
            reach = what(event, args)
            if reach is None:
                return
            frame = sys._getframe(1)
            while frame is not None and kind(frame.f_code.co_filename) == "through":
                frame = frame.f_back
            if frame is None or kind(frame.f_code.co_filename) != "checkout":
                return
            where = (os.path.relpath(os.path.realpath(frame.f_code.co_filename), root), frame.f_lineno)
            if (reach, *where) not in seen:  # once per line and kind: as many as the checkout has lines
                seen.add((reach, *where))
                write({"reach": reach, "event": event, "file": where[0], "line": where[1]})
        except Exception:  # noqa: BLE001 - a hook that raises would break the code under test
            pass
        finally:
            busy.on = False

    sys.addaudithook(hook)
