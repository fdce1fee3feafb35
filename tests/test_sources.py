"""Harvesting repositories: real git repositories built in tmp_path, the demo repository, a real PyPI sdist."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import git
import pytest

from trajfactory.schema import content_hash
from trajfactory.sources import mirrors, repos
from trajfactory.sources.licenses import folder_license, guess_license, license_from_metadata
from trajfactory.sources.repos import SourceError, harvest, parse_uri
from trajfactory.sources.tutorials import local_pages

DEMO = Path(repos.__file__).resolve().parents[1] / "data" / "repos" / "textkit"
APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"


def _commit(repo: git.Repo, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = Path(repo.working_tree_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    repo.index.add(list(files))
    return repo.index.commit(message).hexsha


@pytest.fixture
def origin(tmp_path):
    """A work tree with main (2 commits), an annotated tag v1 and a branch `feature`, plus its bare clone."""
    work = git.Repo.init(tmp_path / "work", initial_branch="main")
    first = _commit(work, {"pkg/core.py": "VALUE = 1\n", "LICENSE": APACHE}, "first")
    work.create_tag("v1", message="release 1")
    work.git.checkout("-b", "feature")
    feature = _commit(work, {"pkg/core.py": "VALUE = 3\n"}, "feature")
    work.git.checkout("main")
    second = _commit(work, {"pkg/core.py": "VALUE = 2\n"}, "second")
    bare = tmp_path / "origin.git"
    git.Repo.clone_from(work.working_tree_dir, bare, bare=True).close()
    return SimpleNamespace(work=work, bare=bare, url=f"file://{bare}", first=first, second=second, feature=feature)


def _value(source) -> str:
    return (Path(source.path) / "pkg" / "core.py").read_text().strip()


# ---------------------------------------------------------------- git URLs


def test_default_pins_the_remote_head(origin, tmp_path):
    source = harvest(origin.url, tmp_path / "mirrors")
    assert (source.kind, source.name, source.commit) == ("git", "origin", origin.second)
    assert Path(source.path).parent == tmp_path / "mirrors"
    assert _value(source) == "VALUE = 2"  # the mirror's work tree is the pinned commit
    assert (source.license, source.license_file) == ("Apache-2.0", "LICENSE")
    assert source.source_id == content_hash(str(origin.bare), origin.second)


@pytest.mark.parametrize("ref, expected", [("v1", "first"), ("feature", "feature"), ("main", "second")])
def test_pins_tags_and_branches(origin, tmp_path, ref, expected):
    source = harvest(f"{origin.url}@{ref}", tmp_path / "mirrors")
    assert source.commit == getattr(origin, expected)


def test_pins_full_and_short_shas(origin, tmp_path):
    assert harvest(f"{origin.url}@{origin.first}", tmp_path / "m").commit == origin.first
    source = harvest(f"{origin.bare}@{origin.feature[:10]}", tmp_path / "m")
    assert source.commit == origin.feature and _value(source) == "VALUE = 3"


def test_the_same_commit_has_one_source_id_whatever_the_spelling(origin, tmp_path):
    ids = {
        harvest(uri, tmp_path / "mirrors").source_id
        for uri in (origin.url, f"{origin.url}@main", f"{origin.bare}@{origin.second}", f"file://{origin.bare}/")
    }
    assert len(ids) == 1


def test_unknown_ref_names_the_refs_that_exist(origin, tmp_path):
    with pytest.raises(SourceError) as err:
        harvest(f"{origin.url}@nope", tmp_path / "mirrors")
    assert err.value.reason == "bad_ref"
    assert "nope" in str(err.value) and "main" in str(err.value)


def test_mirror_is_reused_and_fetched_only_when_needed(origin, tmp_path, monkeypatch):
    first = harvest(origin.url, tmp_path / "mirrors")
    monkeypatch.setattr(mirrors, "clone", lambda *a, **k: pytest.fail("cloned again"))
    fetches = []
    real_fetch = mirrors.fetch
    monkeypatch.setattr(mirrors, "fetch", lambda *a, **k: (fetches.append(a), real_fetch(*a, **k)))
    assert harvest(f"{origin.url}@v1", tmp_path / "mirrors").path == first.path
    assert fetches == []  # the tag's commit was already mirrored
    newer = _commit(origin.work, {"pkg/core.py": "VALUE = 4\n"}, "third")
    origin.work.git.push(str(origin.bare), "main")
    again = harvest(origin.url, tmp_path / "mirrors")
    assert (again.commit, again.path, len(fetches)) == (newer, first.path, 1)


def test_a_mirrored_sha_needs_no_remote(origin, tmp_path):
    harvest(origin.url, tmp_path / "mirrors")
    origin.bare.rename(tmp_path / "gone.git")
    source = harvest(f"{origin.url}@{origin.first}", tmp_path / "mirrors")
    assert source.commit == origin.first and _value(source) == "VALUE = 1"


def test_empty_remote(tmp_path):
    git.Repo.init(tmp_path / "empty.git", bare=True).close()
    with pytest.raises(SourceError) as err:
        harvest(f"file://{tmp_path}/empty.git", tmp_path / "mirrors")
    assert err.value.reason == "empty" and "empty.git" in str(err.value)


# ---------------------------------------------------------------- local paths


def test_local_work_tree_is_cloned_not_touched(origin, tmp_path):
    before = origin.work.git.status("--porcelain")
    source = harvest(str(origin.work.working_tree_dir), tmp_path / "mirrors")
    assert (source.kind, source.name, source.commit) == ("local", "work", origin.second)
    assert Path(source.path) != Path(origin.work.working_tree_dir)
    assert origin.work.git.status("--porcelain") == before and origin.work.active_branch.name == "main"
    assert harvest(f"{origin.work.working_tree_dir}@v1", tmp_path / "mirrors").commit == origin.first


def test_uncommitted_changes_are_left_out_with_a_warning(origin, tmp_path, caplog):
    (Path(origin.work.working_tree_dir) / "pkg" / "core.py").write_text("VALUE = 99\n")
    with caplog.at_level(logging.WARNING, logger="trajfactory.sources.repos"):
        source = harvest(str(origin.work.working_tree_dir), tmp_path / "mirrors")
    assert source.commit == origin.second and _value(source) == "VALUE = 2"
    assert "uncommitted changes" in caplog.text


def test_plain_directory_becomes_a_one_commit_repository(tmp_path):
    plain = tmp_path / "plainpkg"
    (plain / "__pycache__").mkdir(parents=True)
    (plain / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (plain / "mod.py").write_text("def f():\n    return 1\n")
    (plain / "pyproject.toml").write_text('[project]\nname = "plainpkg"\nlicense = {text = "BSD 3-Clause"}\n')
    source = harvest(str(plain), tmp_path / "a")
    assert (source.kind, source.name) == ("local", "plainpkg")
    assert (source.license, source.license_file) == ("BSD-3-Clause", None)  # from pyproject: there is no file
    with git.Repo(source.path) as repo:
        commits = list(repo.iter_commits(source.commit))
        assert len(commits) == 1 and commits[0].author.name == "trajfactory"
        assert sorted(b.path for b in commits[0].tree.traverse()) == ["mod.py", "pyproject.toml"]
    assert not (plain / ".git").exists()
    again, elsewhere = harvest(str(plain), tmp_path / "a"), harvest(str(plain), tmp_path / "b")
    assert again.commit == elsewhere.commit == source.commit and again.path == source.path


@pytest.mark.parametrize("make", ["empty_dir", "empty_repo"])
def test_empty_local_sources(tmp_path, make):
    target = tmp_path / "nothing"
    target.mkdir()
    if make == "empty_repo":
        git.Repo.init(target).close()
    with pytest.raises(SourceError) as err:
        harvest(str(target), tmp_path / "mirrors")
    assert err.value.reason == "empty" and str(target) in str(err.value)


def test_demo_repository_harvests_as_mit(tmp_path):
    source = harvest(str(DEMO), tmp_path / "mirrors")
    assert (source.kind, source.name, source.license, source.license_file) == ("local", "textkit", "MIT", "LICENSE")
    with git.Repo(source.path) as repo:
        files = [b.path for b in repo.commit(source.commit).tree.traverse() if b.type == "blob"]
    assert "src/textkit/cache.py" in files and "tests/test_cache.py" in files
    assert not any("__pycache__" in f for f in files)


def test_demo_repository_suite_passes(tmp_path):
    work = shutil.copytree(DEMO, tmp_path / "textkit", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": "src", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = int(proc.stdout.strip().splitlines()[-1].split()[0])
    assert passed >= 40


# ---------------------------------------------------------------- errors and URI forms


@pytest.mark.parametrize(
    "uri",
    [lambda t: str(t / "missing"), lambda t: "file:///nonexistent/repo.git", lambda t: f"{t}/missing.git@main"],
    ids=["path", "file-url", "dot-git-path"],
)
def test_missing_repositories_are_not_found(tmp_path, uri):
    with pytest.raises(SourceError) as err:
        harvest(uri(tmp_path), tmp_path / "mirrors")
    assert err.value.reason == "not_found"
    assert ("missing" in str(err.value)) != ("nonexistent" in str(err.value))  # the message names the input


@pytest.mark.parametrize(
    "uri, hint",
    [
        ("pypi:foo", "pypi:NAME==VERSION"),
        ("pypi:foo==", "pypi:NAME==VERSION"),
        ("pypi:==1.0", "pypi:NAME==VERSION"),
        ("ftp://example.com/repo.git", "not a git transport"),
        ("https://github.com", "names no repository"),
        ("https://github.com/o/r.git@", "URL@REF"),
        ("https://github.com/o/r.git@a..b", "URL@REF"),
        ("   ", "expected a git URL"),
    ],
)
def test_garbage_uris_are_rejected_with_a_hint(uri, hint):
    with pytest.raises(SourceError) as err:
        parse_uri(uri)
    assert err.value.reason == "bad_uri"
    assert hint in str(err.value) and uri.strip() in str(err.value)


@pytest.mark.parametrize(
    "uri, kind, location, ref, normalized",
    [
        ("https://GitHub.com/Own/Repo.git", "git", "https://GitHub.com/Own/Repo.git", None, "github.com/Own/Repo"),
        ("https://tok@GitHub.com/o/r@feature/x", "git", "https://tok@GitHub.com/o/r", "feature/x", "github.com/o/r"),
        ("git@github.com:o/r.git@v1.2", "git", "git@github.com:o/r.git", "v1.2", "github.com/o/r"),
        ("file:///srv/r.git@abc1234", "git", "file:///srv/r.git", "abc1234", "/srv/r.git"),
        ("pypi:Foo_Bar==1.0.post1", "pypi", "Foo_Bar", "1.0.post1", "pypi:foo-bar"),
    ],
)
def test_parse_uri_forms(uri, kind, location, ref, normalized):
    parsed = parse_uri(uri)
    assert (parsed.kind, parsed.location, parsed.ref, parsed.normalized) == (kind, location, ref, normalized)


# ---------------------------------------------------------------- licenses


@pytest.mark.parametrize(
    "text, expected",
    [
        (APACHE, "Apache-2.0"),
        ("Redistribution and use in source and binary forms ... 3. Neither the name of", "BSD-3-Clause"),
        ("Redistribution and use in source and binary forms, with or without modification", "BSD-2-Clause"),
        ("GNU GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007", "GPL-3.0"),
        ("GNU LESSER GENERAL PUBLIC LICENSE Version 2.1 ... GNU General Public License", "LGPL-2.1"),
        ("Mozilla Public License Version 2.0\n==================", "MPL-2.0"),
        ("Permission to use, copy, modify, and/or distribute this software for any purpose with", "ISC"),
        ("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2", "PSF-2.0"),
        ("Copyright (c) 2020\n\nPermission is hereby granted, free of charge, to any person", "MIT"),
        ("All rights reserved. Ask us.", None),
    ],
)
def test_guess_license_from_text(text, expected):
    assert guess_license(text) == expected


def test_license_from_metadata_falls_back_through_the_files():
    setup_cfg = b"[metadata]\nclassifiers =\n  License :: OSI Approved :: ISC License (ISCL)\n"
    assert license_from_metadata({"setup.cfg": setup_cfg}) == "ISC"
    assert license_from_metadata({"PKG-INFO": b"Metadata-Version: 2.1\nName: x\nLicense: UNKNOWN\n"
                                  b"Classifier: License :: OSI Approved :: Apache Software License\n"}) == "Apache-2.0"
    assert license_from_metadata({"pyproject.toml": b'[project]\nlicense = "MIT"\n'}) == "MIT"
    assert license_from_metadata({"pyproject.toml": b"not toml ["}) is None


def test_a_local_tutorial_folder_tells_its_license_like_a_repository(tmp_path):
    """A declared `SPDX-License-Identifier:` (license file or README), else a license file's text, in the folder or
    above it up to the project's root; the license file is no page of the folder."""
    project = tmp_path / "project"
    pages = project / "docs" / "howtos"
    pages.mkdir(parents=True)
    (pages / "a.html").write_text("<p>Click 'Save'.</p>")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert folder_license(pages) is None  # nothing says: unknown, and nothing above the project's root is read
    (tmp_path / "LICENSE").write_text("Permission is hereby granted, free of charge, to any person")
    assert folder_license(pages) is None
    (project / "LICENSE").write_text("Copyright (c) 2026\n\nPermission is hereby granted, free of charge, to any person")
    assert folder_license(pages) == "MIT" and folder_license(pages / "a.html") == "MIT"  # from the project above
    (pages / "README.md").write_text("# How-tos\n\n<!-- SPDX-License-Identifier: CC-BY-4.0 -->\n")
    assert folder_license(pages) == "CC-BY-4.0"  # declared beside the pages: beats the project's
    (pages / "LICENSE.txt").write_text("SPDX-License-Identifier: Apache-2.0 AND MIT\n\nPages: ours; quotes: theirs.\n")
    assert folder_license(pages) == "Apache-2.0 AND MIT"  # the license file before the README
    assert [Path(p.uri).name for p in local_pages(pages)] == ["README.md", "a.html"]


# ---------------------------------------------------------------- PyPI sdists (real PyPI)


@pytest.fixture(scope="module")
def inflection(tmp_path_factory):
    roots = [tmp_path_factory.mktemp("pypi-a"), tmp_path_factory.mktemp("pypi-b")]
    return roots, [harvest("pypi:inflection==0.5.1", root) for root in roots]


def test_pypi_sdist_becomes_a_deterministic_commit(inflection):
    _, (a, b) = inflection
    assert a.commit == b.commit and a.source_id == b.source_id and a.path != b.path
    assert (a.kind, a.name, a.license, a.license_file) == ("pypi", "inflection", "MIT", "LICENSE")
    with git.Repo(a.path) as repo:
        assert len(list(repo.iter_commits(a.commit))) == 1
        files = [b.path for b in repo.commit(a.commit).tree.traverse() if b.type == "blob"]
    assert "inflection/__init__.py" in files and "test_inflection.py" in files
    assert not any(".egg-info" in f or "__pycache__" in f for f in files)  # build litter the sdist ships


def test_pypi_mirror_is_reused_without_the_index(inflection, monkeypatch):
    roots, (a, _) = inflection
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # an index that never answers
    again = harvest("pypi:inflection==0.5.1", roots[0])
    assert (again.commit, again.path) == (a.commit, a.path)


@pytest.mark.parametrize("uri", ["pypi:trajfactory-no-such-package-xyz==9.9", "pypi:inflection==99.0"])
def test_unknown_pypi_package_or_version_is_not_found(tmp_path, uri):
    with pytest.raises(SourceError) as err:
        harvest(uri, tmp_path / "mirrors")
    assert err.value.reason == "not_found" and uri in str(err.value)
