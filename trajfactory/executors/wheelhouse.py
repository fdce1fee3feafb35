"""A repository's wheelhouse and the project itself, for its sandbox environment (both backends).

- `build_wheelhouse`: the requirements (`requirements.py`) downloaded on the host (containers reach no package
  index) into a wheelhouse keyed by the requirement set and the sandbox's Python, each distribution chosen for
  that Python (its `Requires-Python`), not for the host's.
- `INSTALL_PROJECT`: the script that installs the project itself inside the environment (a true
  `install_failed` at build time), keeping its metadata but importing its code from the checkout.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from .base import EnvironmentBuildError

from .images import _run, default_cache_root

from .build_requirements import find_build_requirements
from .requirements import find_requirements
from .wheel_fit import fits, missing_for, requires_python, tags_fit

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- wheelhouse


def requirements_key(requirements: list[str], python_version: str | None = None) -> str:
    py = f"cp{sys.version_info.major}{sys.version_info.minor}-{sys.platform}"
    if python_version and python_version != platform.python_version():
        py += f"-for-{python_version}"
    return hashlib.sha256("\n".join([py, *sorted(requirements)]).encode()).hexdigest()[:16]


def _failed_requirement(pip_output: str, requirements: list[str]) -> str:
    m = re.search(r"(?:No matching distribution found for|satisfies the requirement) (\S+)", pip_output)
    return m.group(1) if m else ", ".join(requirements)


_PIP_NOISE = re.compile(
    r"^\s*(WARNING: Location '.*' is ignored|WARNING: Running pip as the 'root' user|"
    r"WARNING: You are using pip version|"
    r"\[notice\]|WARNING: The directory '.*' or its parent directory is not owned|"
    r"WARNING: Skipping .* due to invalid metadata entry)"
)
"""Lines of pip's output that say something about the machine pip ran on, not about the repository."""


def pip_output(text: str, lines: int | None = 15) -> str:
    """pip's output without the host's noise (an unreachable extra index, running as root), its last `lines`."""
    kept = [line for line in text.strip().splitlines() if line.strip() and not _PIP_NOISE.match(line)]
    if lines is not None:
        kept = kept[-lines:]
    return "\n".join(kept)


def build_wheelhouse(repo_dir: str | Path, cache_root: str | Path | None = None,
                     python_version: str | None = None, extra: list[str] | None = None) -> tuple[Path, list[str]]:
    """Download the repository's requirements as wheels on the host; cached by the requirement set.

    The wheelhouse holds `requirements.txt` (what the environment installs) and `build-requirements.txt` (what
    building the project itself needs, installed only into pip's isolated build environment), each resolved on
    its own: a build backend's pin never conflicts with a runtime one. `python_version` is the sandbox's Python
    (`3.11.2`) when it is not the host's: pip then picks each distribution for it, so a release whose
    `Requires-Python` admits the host (3.11.7) but not the sandbox (soupsieve 2.10 says `>=3.11.5`) is never
    chosen; the image's own install would refuse it. `extra`: test requirements the recipe adds (`find_requirements`).
    """
    target = python_version or platform.python_version()
    requirements = find_requirements(repo_dir, extra)
    build_requirements = find_build_requirements(repo_dir)
    root = Path(cache_root or default_cache_root()) / "wheelhouse"
    house = root / requirements_key([*requirements, *(f"build:{r}" for r in build_requirements)], target)
    if (house / ".complete").exists():
        if all(fits(w, target) for w in house.glob("*.whl")) and (
                target == platform.python_version() or not missing_for(house, [*requirements, *build_requirements],
                                                                       target)):
            log.info("wheelhouse %s cached (%d requirements)", house.name, len(requirements))
            return house, requirements
        # made before its wheels' tags and markers were checked for the sandbox's Python: made again
        log.info("wheelhouse %s does not install on Python %s; making it again", house.name, target)
        shutil.rmtree(house, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{house.name}-", dir=root))
    try:
        (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (tmp / "build-requirements.txt").write_text("".join(f"{r}\n" for r in build_requirements))
        log.info("downloading %d requirements into wheelhouse %s for Python %s: %s (to build the project: %s)",
                 len(requirements), house.name, target, requirements, build_requirements)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        for listing, what in (("requirements.txt", "requirement"), ("build-requirements.txt", "build requirement")):
            wanted = requirements if listing == "requirements.txt" else build_requirements
            if not wanted:
                continue
            out = _download(pip, tmp, ["-r", str(tmp / listing)], target)
            if out.returncode != 0:
                req = _failed_requirement(out.stdout + out.stderr, wanted)
                raise EnvironmentBuildError(
                    "install_failed",
                    f"could not download {what} {req} of {repo_dir}: {pip_output(out.stderr or out.stdout)}; "
                    f"the requirement must be available from the configured package index "
                    f"(`pip download '{req}'` on the host must work) or be fixed in the repository's "
                    f"{'dependency files' if listing == 'requirements.txt' else '[build-system] requires'}",
                )
        # sources-only distributions are built here once: the sandbox has no build backends
        for sdist in [p for p in tmp.iterdir() if p.name.endswith((".tar.gz", ".zip", ".tar.bz2"))]:
            out = _run([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp), str(sdist)])
            if out.returncode != 0:
                raise EnvironmentBuildError(
                    "install_failed",
                    f"could not build a wheel from {sdist.name} (needed by {repo_dir}): {pip_output(out.stderr)}; "
                    "a wheel of it must be available from the package index or it must build offline",
                )
            sdist.unlink()
        _fit_python(pip, tmp, target, repo_dir)
        if target != platform.python_version():
            _complete_for(pip, tmp, target, [*requirements, *build_requirements], repo_dir)
        (tmp / ".complete").touch()
        try:
            tmp.rename(house)
        except OSError:  # another process finished the same wheelhouse first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return house, requirements


def _download(pip: list[str], dest: Path, what: list[str], target: str):
    """`pip download` of `what` into `dest`, each distribution chosen for Python `target`.

    pip chooses for another interpreter (`--python-version`) only among wheels; when some requirement has none,
    the requirements are resolved as for the host, and `_fit_python` replaces what the sandbox cannot install.
    """
    if target != platform.python_version():
        out = _wheels_for(pip, dest, what, target)
        if out.returncode == 0:
            return out
    return _run([*pip, "download", "-q", "--prefer-binary", "-d", str(dest), *what])


def _wheels_for(pip: list[str], dest: Path, what: list[str], target: str):
    """`pip download` of wheels only, chosen for Python `target`; `dest` gets them only if all resolve."""
    staged = Path(tempfile.mkdtemp(prefix=".for-python-", dir=dest))
    try:
        out = _run([*pip, "download", "-q", "--only-binary=:all:", "--python-version", target, "-d", str(staged),
                    *what])
        if out.returncode == 0:
            for wheel in staged.iterdir():
                if not (dest / wheel.name).exists():
                    shutil.move(str(wheel), dest / wheel.name)
        return out
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _fit_python(pip: list[str], house: Path, target: str, repo_dir: str | Path) -> None:
    """Replace each wheel of `house` whose `Requires-Python` or tags exclude `target` by the newest release of its
    distribution that admits it (with that release's own dependencies); a distribution with none is an
    `install_failed` that names it."""
    for wheel in sorted(house.glob("*.whl")):
        if fits(wheel, target):
            continue
        name = canonicalize_name(wheel.name.split("-")[0])
        spec = requires_python(wheel)
        why = f"requires Python {spec}" if tags_fit(wheel.name, target) else \
            f"is built for another Python (its tags: {wheel.name.split('-', 2)[2].removesuffix('.whl')})"
        log.info("%s %s, the sandbox has %s: choosing a release of %s for it", wheel.name, why, target, name)
        wheel.unlink()
        out = _wheels_for(pip, house, [name], target)
        if out.returncode != 0 or not any(fits(w, target) for w in house.glob("*.whl")
                                          if canonicalize_name(w.name.split("-")[0]) == name):
            raise EnvironmentBuildError(
                "install_failed",
                f"{wheel.name}, which {repo_dir} needs, {why} and the sandbox has Python {target}; "
                f"no wheel of {name} for Python {target} could be downloaded: {pip_output(out.stderr or out.stdout)}",
            )


def _complete_for(pip: list[str], house: Path, target: str, requirements: list[str], repo_dir: str | Path) -> None:
    """Add what Python `target`'s markers ask for and the host's did not (`tomli; python_version < "3.11"` for a
    3.9 sandbox, resolved on a 3.11 host): each missing distribution, for `target`, until nothing is missing; one
    that cannot be had is an `install_failed` that names it."""
    for _ in range(8):
        missing = missing_for(house, requirements, target)
        if not missing:
            return
        log.info("Python %s also needs %s (their markers leave them out on the host's Python)", target,
                 ", ".join(missing))
        out = _wheels_for(pip, house, missing, target)
        if out.returncode != 0:
            raise EnvironmentBuildError(
                "install_failed",
                f"{', '.join(missing)}, which {repo_dir} needs on Python {target}, could not be downloaded for it: "
                f"{pip_output(out.stderr or out.stdout)}")
        _fit_python(pip, house, target, repo_dir)


# ---------------------------------------------------------------------------- the project itself

INSTALL_PROJECT = r'''
"""Install the project itself: build its wheel offline, install it, then import its code from the checkout.

Usage: python install_project.py CHECKOUT WHEELHOUSE IMPORT_DIR. Runs with the environment's own Python.
A wheel is built from a copy of the checkout (a build writes build/ and *.egg-info into the tree it builds) with
pip's build isolation, the backend coming from the wheelhouse; the wheel is installed without its dependencies
(the environment has them already); then the installed copies of the modules the checkout holds under IMPORT_DIR
are removed, so the import system finds them in the checkout (a .pth puts IMPORT_DIR on sys.path) and every
patch applied there is what the tests import, while the metadata, entry points and scripts stay installed.
The compiled extension modules among them (markupsafe's `_speedups`, bitarray's `_bitarray`: the checkout holds
their C sources, not the built files) move to a folder of their own, and a finder placed after the import
system's own (`_trajfactory_built`, started by a .pth) loads them from there: the maintainers' build in place, with
a module of the checkout's own of the same name still first. The checkout stays exactly its commit.
"""
import importlib, importlib.machinery, importlib.metadata, json, os, re, shutil, site, subprocess, sys, tempfile
from pathlib import Path

checkout, house, import_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
pip = [sys.executable, "-m", "pip"]


def fail(what, out):
    lines = out.splitlines()
    phase = next((m.group(1) for m in map(re.compile(r"^\W*(.+ did not run successfully)").match, lines) if m), what)
    block = lines
    for n, line in enumerate(lines):  # pip quotes the backend's output between these two lines
        if re.search(r"\[\d+ lines? of output\]", line):
            block = lines[n + 1:]
            block = block[:next((k for k, l in enumerate(block) if "[end of output]" in l), len(block))]
            break
    causes = [l.strip() for l in block if re.match(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Exit|Failure)\b|error:)", l)]
    cause = causes[-1] if causes else (block[-1].strip() if block else "")
    print(f"TRAJFACTORY_INSTALL_FAILED: {phase}: {cause}"[:600])
    print(out)
    sys.exit(1)


def run(cmd):  # the build runs in a copy: its paths are shown relative to the checkout
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return out.returncode, out.stdout.replace(f"{src}/", "").replace(str(src), ".")


work = Path(tempfile.mkdtemp(prefix="trajfactory-install-"))
try:
    src = work / "src"
    # an sdist carries its version in PKG-INFO, which setuptools-scm and hatch-vcs read when there is no git
    ignore = shutil.ignore_patterns(".git") if (checkout / "PKG-INFO").is_file() else None
    shutil.copytree(checkout, src, symlinks=True, ignore=ignore)
    dist_dir = work / "dist"
    # PEP 517 always (as current pip does): the build backend is the wheelhouse's, never the image's setuptools
    code, out = run([*pip, "wheel", "--use-pep517", "--no-deps", "--no-index", "--find-links", house,
                     "-w", str(dist_dir), str(src)])
    wheels = sorted(dist_dir.glob("*.whl")) if dist_dir.is_dir() else []
    if code != 0 or not wheels:
        fail("building a wheel of the project", out)
    wheel = wheels[0]
    code, out = run([*pip, "install", "--no-deps", "--no-index", "--force-reinstall", "--no-warn-script-location",
                     str(wheel)])
    if code != 0:
        fail("installing the wheel of the project", out)
finally:
    shutil.rmtree(work, ignore_errors=True)

BUILT_FINDER = """\"\"\"The project's compiled extension modules, built with its image (see trajfactory's install_project).\"\"\"
import importlib.machinery, importlib.util, os, sys

BUILT = {}  # BUILT


class TrajfactoryBuiltExtensions:
    \"\"\"Finds a compiled module of the project after the import system's own finders found none.\"\"\"

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        where = BUILT.get(fullname)
        if where is None or not os.path.isfile(where):
            return None
        return importlib.util.spec_from_file_location(
            fullname, where, loader=importlib.machinery.ExtensionFileLoader(fullname, where))

    @staticmethod
    def invalidate_caches():
        pass


if TrajfactoryBuiltExtensions not in sys.meta_path:
    sys.meta_path.append(TrajfactoryBuiltExtensions)
"""

importlib.invalidate_caches()
name = wheel.name.split("-")[0]
dist = importlib.metadata.distribution(name)
tops = {}
for f in dist.files or []:
    top = f.parts[0]
    if top in ("..", "__pycache__") or top.endswith((".dist-info", ".data", ".pth")):
        continue
    module = top.split(".")[0] if len(f.parts) == 1 else top
    tops.setdefault(module, []).append(f)
SKIP_DIRS = {"tests", "test", "testing", "docs", "doc", "build", "dist", "examples", "benchmarks", "node_modules"}


def holds(base, module, files):
    """Whether folder `base` holds the code of `module` as the wheel has it: its package's `__init__.py`, its single
    file, or (a namespace package) one of its Python files, at the same path. PyYAML's checkout has a `yaml/` of
    Cython sources at its top and the package in `lib/yaml/`: the top one is not the package."""
    rel = {Path(*f.parts) for f in files}
    if Path(module, "__init__.py") in rel:
        return (base / module / "__init__.py").is_file()
    if Path(f"{module}.py") in rel:
        return (base / f"{module}.py").is_file()
    return any((base / r).is_file() for r in rel if r.suffix == ".py")


def import_base(module, files):
    """The checkout's folder the import system finds `module` in: IMPORT_DIR, else the one folder (two levels down at
    most, no tests or docs) that holds it, as a `package_dir` of setup.py (`lib/`) puts it; None: not the checkout's."""
    if not any(Path(*f.parts).suffix == ".py" for f in files):  # compiled only: the checkout holds its sources
        return import_dir if (import_dir / module).is_dir() or (import_dir / f"{module}.py").is_file() else None
    if holds(import_dir, module, files):
        return import_dir
    found = [d for d in sorted(checkout.glob("*")) + sorted(checkout.glob("*/*"))
             if d.is_dir() and d != import_dir and not any(p.startswith(".") or p in SKIP_DIRS
                                                           for p in d.relative_to(checkout).parts)
             and holds(d, module, files)]
    return found[0] if len(found) == 1 else None


linked, kept, built, extra_dirs = [], [], {}, []
# where pip installs (Debian bullseye's sysconfig names a purelib/platlib that does not exist; site's first is pip's)
SITE = Path(site.getsitepackages()[0])
built_dir = SITE / "_trajfactory_built_modules"
for module, files in sorted(tops.items()):
    base = import_base(module, files)
    if base is not None and base != import_dir and base not in extra_dirs:
        extra_dirs.append(base)
    if base is not None:
        for f in files:
            path = Path(dist.locate_file(f))
            suffix = next((s for s in importlib.machinery.EXTENSION_SUFFIXES if f.name.endswith(s)), "")
            if suffix and path.is_file():  # a compiled module: kept, where the checkout's own modules come first
                (built_dir / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), str(built_dir / f))
                built[".".join([*f.parts[:-1], f.name[:-len(suffix)]])] = str(built_dir / f)
            path.unlink(missing_ok=True)
        top = Path(dist.locate_file(module))
        if top.is_dir():  # what pip's byte-compiling left; never a shared namespace package's other files
            for d in sorted((p for p in [top, *top.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)):
                for cache in d.glob("__pycache__"):
                    shutil.rmtree(cache, ignore_errors=True)
                if not any(d.iterdir()):
                    d.rmdir()
        linked.append(module)
    else:
        kept.append(module)
if extra_dirs:  # after IMPORT_DIR's own .pth; a regular package there comes before a folder of the same name above it
    (SITE / "trajfactory_repo_dirs.pth").write_text(
        "".join(f"{d}\n" for d in extra_dirs))
if built:
    (SITE / "_trajfactory_built.py").write_text(BUILT_FINDER.replace("{}  # BUILT", repr(dict(sorted(built.items())))))
    (SITE / "_trajfactory_built.pth").write_text("import _trajfactory_built\n")
print("TRAJFACTORY_INSTALLED " + json.dumps({"name": dist.metadata["Name"], "version": dist.version,
                                              "from_checkout": linked, "installed_copy": kept,
                                              "built_extensions": sorted(built),
                                              "extra_import_dirs": [str(d.relative_to(checkout)) for d in extra_dirs]}))
'''
"""The script that installs the project itself in an environment (see its docstring); run by both backends."""

INSTALL_FAILED = "TRAJFACTORY_INSTALL_FAILED:"
INSTALLED = "TRAJFACTORY_INSTALLED "


def install_failure(output: str, repo: str) -> str:
    """The quarantine detail of a failed install of the project itself: its one-line cause, then pip's tail."""
    lines = output.splitlines()
    head = next((line.split(INSTALL_FAILED, 1)[1].strip() for line in lines if INSTALL_FAILED in line), "")
    docker = ("Removing intermediate container", "The command '/bin/sh -c", " ---> ")
    kept = [line for line in lines if INSTALL_FAILED not in line and not line.startswith(docker)]
    tail = pip_output("\n".join(kept), 12)
    return (f"the project itself does not install ({head or 'pip failed'}); a maintainer's `pip install .` of {repo} "
            f"fails the same way (its build backend comes from the wheelhouse, offline):\n{tail}")
