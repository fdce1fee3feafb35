"""`pypi:NAME@latest:N`: a recipe asks for the N newest releases of a package, resolved against the package index
(PIP_INDEX_URL; here a real index server on loopback with real sdists, since PyPI is a remote service) when the run
starts, each release a repository of its own; a scheduled run after a new release makes the next version, whose card
names the new release. Bad input fails naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

import cli_runs
from conftest import DEMO_REPO
from pypi_index_server import PackageIndex, sdist
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import Quarantine
from trajfactory.settings import RecipeError, load_recipe
from trajfactory.sources import expand_repo, pypi_index
from trajfactory.sources.repos import SourceError, expand_uri, harvest, parse_uri

NAME = "tf-demo-kit"


def publish(index: PackageIndex, version: str, name: str = NAME, **kw) -> None:
    """A real sdist of the bundled textkit repository as release `version` (a file of its own says which)."""
    data = sdist(name, version, DEMO_REPO, {"src/textkit/_release.py": f'RELEASE = "{version}"\n'})
    index.add(name, f"{name.replace('-', '_')}-{version}.tar.gz", data, **kw)


@pytest.fixture(params=["json", "html"])
def index(request, monkeypatch):
    """The index on loopback as PIP_INDEX_URL: PEP 691 JSON, or an index that only speaks PEP 503 HTML."""
    with PackageIndex(html_only=request.param == "html") as idx:
        monkeypatch.setenv("PIP_INDEX_URL", idx.url)
        yield idx


def test_latest_n_are_the_newest_final_releases_with_an_sdist(index):
    for version in ("0.9", "1.0", "1.10", "1.2"):
        publish(index, version)
    publish(index, "2.0rc1")  # a pre-release
    publish(index, "1.11", yanked=True)
    index.add(NAME, "tf_demo_kit-3.0-py3-none-any.whl", b"only a wheel")
    index.add(NAME, "other_pkg-9.0.tar.gz", b"another project's file on the page")
    # PEP 440 order (1.10 after 1.2), no yanked file, no pre-release, no wheel-only release
    assert expand_uri(f"pypi:{NAME}@latest:2") == [f"pypi:{NAME}=={v}" for v in ("1.10", "1.2")]
    assert expand_uri(f"pypi:{NAME}@latest:2:pre") == [f"pypi:{NAME}=={v}" for v in ("2.0rc1", "1.10")]
    assert expand_uri(f"pypi:{NAME}@latest:9") == [f"pypi:{NAME}=={v}" for v in ("1.10", "1.2", "1.0", "0.9")]
    asked = len(index.requests)
    assert expand_uri(f"pypi:{NAME}==1.0") == [f"pypi:{NAME}==1.0"] and len(index.requests) == asked  # no lookup
    assert parse_uri(f"pypi:{NAME}@latest:3").latest == 3 and parse_uri(f"pypi:{NAME}@latest:3:pre").pre


def test_latest_n_skips_releases_whose_requires_python_excludes_the_sandboxs(index, caplog):
    """soupsieve 4.1.4 needs Python >= 3.11.5 and the base image has 3.11.2: `@latest` took it and its install failed.
    pip picks the newest release that supports its Python; so does `@latest`, given the sandbox's."""
    publish(index, "1.0", requires_python=">=3.8")
    publish(index, "1.1")  # no constraint
    publish(index, "1.2", requires_python=">=3.11.5,<4")
    publish(index, "2.0", requires_python=">=3.13")
    with caplog.at_level("INFO", logger="trajfactory.sources.pypi_index"):
        assert expand_uri(f"pypi:{NAME}@latest:2", python="3.11.2") == [f"pypi:{NAME}=={v}" for v in ("1.1", "1.0")]
    assert "the sandbox's Python 3.11.2 is too old for 2.0 (>=3.13), 1.2 (>=3.11.5,<4);" in caplog.text
    assert expand_uri(f"pypi:{NAME}@latest:1", python="3.12.1") == [f"pypi:{NAME}==1.2"]
    assert expand_uri(f"pypi:{NAME}@latest:1") == [f"pypi:{NAME}==2.0"]  # no Python known: the newest
    assert expand_uri(f"pypi:{NAME}==2.0", python="3.11.2") == [f"pypi:{NAME}==2.0"]  # a pin is taken as written
    publish(index, "0.1", name="tf-new-kit", requires_python=">=3.12")
    publish(index, "0.2", name="tf-new-kit", requires_python=">=3.13")
    with pytest.raises(SourceError, match=r"no release of tf-new-kit with an sdist supports the sandbox's Python "
                                          r"3\.11\.2 \(the newest, 0\.2, needs Python >=3\.13\)"):
        expand_uri("pypi:tf-new-kit@latest:1", python="3.11.2")
    bad = expand_repo("pypi:tf-new-kit@latest:1", "3.11.2")
    assert isinstance(bad, Quarantine) and bad.reason == "not_found" and "3.11.2" in bad.detail


def test_the_sandboxes_python_is_the_one_their_commands_run(docker_backend, mirrors):
    """What `@latest` compares Requires-Python with (`pipelines.swe.sandbox_python`) is the Python a sandbox runs."""
    from trajfactory.settings import SandboxConfig
    from trajfactory.sources import harvest_repo
    from trajfactory.synthesizers.swe.stage import build_environment

    env = build_environment(docker_backend, harvest_repo("builtin:textkit", mirrors))
    with docker_backend.start(env, SandboxConfig(memory="512m")) as sandbox:
        ran = sandbox.execute("python3 -c 'import platform; print(platform.python_version())'", timeout=60)
    assert ran.output.strip() == docker_backend.python_version()


def test_without_pip_index_url_the_index_of_pips_own_configuration_is_asked(tmp_path, monkeypatch):
    with PackageIndex() as idx:
        publish(idx, "1.0")
        conf = tmp_path / "pip.conf"
        conf.write_text(f"[global]\nindex-url = {idx.url}\n")
        monkeypatch.delenv("PIP_INDEX_URL", raising=False)
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
        pypi_index._pip_config.cache_clear()
        try:
            assert expand_uri(f"pypi:{NAME}@latest:1") == [f"pypi:{NAME}==1.0"] and idx.requests
        finally:
            pypi_index._pip_config.cache_clear()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "index.pem", tmp_path / "index.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_an_https_index_is_trusted_through_the_cert_of_pips_configuration(tmp_path, monkeypatch):
    cert, key = _self_signed(tmp_path)
    with PackageIndex(tls=(cert, key)) as idx:
        publish(idx, "1.0")
        conf = tmp_path / "pip.conf"
        monkeypatch.delenv("PIP_CERT", raising=False)
        monkeypatch.setenv("PIP_INDEX_URL", idx.url)
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
        try:
            conf.write_text("[global]\n")  # the host's CAs do not know the index's certificate
            pypi_index._pip_config.cache_clear()
            with pytest.raises(SourceError, match="cannot reach the package index") as err:
                expand_uri(f"pypi:{NAME}@latest:1")
            assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
            conf.write_text(f"[global]\ncert = {cert}\n")  # pip's own setting, as pip reads it
            pypi_index._pip_config.cache_clear()
            assert expand_uri(f"pypi:{NAME}@latest:1") == [f"pypi:{NAME}==1.0"]
            conf.write_text(f"[global]\ncert = {tmp_path / 'gone.pem'}\n")
            pypi_index._pip_config.cache_clear()
            with pytest.raises(SourceError, match=r"CA bundle .*gone.pem \(PIP_CERT, or `cert` in pip's configuration\) "
                                                  r"is not a file"):
                expand_uri(f"pypi:{NAME}@latest:1")
        finally:
            pypi_index._pip_config.cache_clear()


def test_a_resolved_release_is_harvested_from_the_index_and_its_hash_checked(index, tmp_path):
    publish(index, "1.0")
    publish(index, "1.1")
    [uri] = expand_uri(f"pypi:{NAME}@latest:1")
    source = harvest(uri, tmp_path / "mirrors")
    assert (source.kind, source.version, source.name, source.license) == ("pypi", "1.1", NAME, "MIT")
    with git.Repo(source.path) as repo:
        release = repo.commit(source.commit).tree / "src" / "textkit" / "_release.py"
        assert release.data_stream.read().decode() == 'RELEASE = "1.1"\n'
    assert any(r.startswith("/files/tf_demo_kit-1.1.tar.gz") for r in index.requests)
    # a file that is not what the index says it is never becomes a source
    publish(index, "1.2", sha256="0" * 64)
    with pytest.raises(SourceError) as err:
        harvest(f"pypi:{NAME}==1.2", tmp_path / "mirrors")
    assert err.value.reason == "download_failed"
    assert "sha256" in str(err.value) and f"pypi:{NAME}==1.2" in str(err.value)
    with pytest.raises(SourceError) as err:
        harvest(f"pypi:{NAME}==7.0", tmp_path / "mirrors")
    assert err.value.reason == "not_found" and "versions with one: 1.0, 1.1, 1.2" in str(err.value)


@pytest.mark.parametrize("uri, says", [
    (f"pypi:{NAME}@latest:0", "N of @latest:N is 1 or more"),
    (f"pypi:{NAME}@latest:-2", "N of @latest:N is 1 or more"),
    (f"pypi:{NAME}@latest:two", "pypi:NAME@latest:N"),
    (f"pypi:{NAME}@latest", "pypi:NAME@latest:N"),
])
def test_a_bad_count_is_refused_naming_the_input(uri, says, tmp_path):
    with pytest.raises(SourceError) as err:
        parse_uri(uri)
    assert err.value.reason == "bad_uri" and uri in str(err.value) and says in str(err.value)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"repos": [{"uri": uri}]}))
    with pytest.raises(RecipeError) as bad:
        load_recipe(recipe)
    assert "field `repos.0.uri`" in str(bad.value) and uri in str(bad.value) and "latest:N" in str(bad.value)


def test_unknown_package_no_sdist_and_only_pre_releases_are_quarantined_naming_the_input(index):
    publish(index, "1.0rc1", name="tf-only-pre")
    index.add("tf-only-wheels", "tf_only_wheels-1.0-py3-none-any.whl", b"wheel")
    cases = {"pypi:tf-no-such-project@latest:2": "has no project 'tf-no-such-project'",
             "pypi:tf-only-wheels@latest:2": "has no sdist",
             "pypi:tf-only-pre@latest:1": "its sdists: 1.0rc1); write pypi:tf-only-pre@latest:1:pre"}
    for uri, says in cases.items():
        row = expand_repo(uri)
        assert isinstance(row, Quarantine) and row.reason == "not_found" and row.uri == uri, row
        assert uri in row.detail and says in row.detail and index.url in row.detail, row.detail
    assert expand_repo("pypi:tf-only-pre@latest:1:pre") == ["pypi:tf-only-pre==1.0rc1"]


def test_an_index_that_cannot_be_reached_is_named(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    row = expand_repo(f"pypi:{NAME}@latest:2")
    assert isinstance(row, Quarantine) and row.reason == "unreachable" and "http://127.0.0.1:9/simple" in row.detail


def test_bug_patches_need_one_release(tmp_path):
    patches = tmp_path / "bugs.jsonl"
    patches.write_text("{}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"repos": [{"uri": f"pypi:{NAME}@latest:2", "bug_patches": str(patches)}]}))
    with pytest.raises(RecipeError, match="bug_patches apply to one release"):
        load_recipe(recipe)


# ---------------------------------------------------------------- a scheduled run picks up a new release

SCHEDULED = ("import sys; from trajfactory.flows.scheduled import scheduled_factory_flow; "
             "print(scheduled_factory_flow(sys.argv[1]))")


def _scheduled_run(tmp: Path, recipe: Path, index: PackageIndex) -> subprocess.CompletedProcess:
    """The flow a deployment runs on its schedule (`flows/scheduled.py`), once, in a process of its own."""
    env = {**cli_runs.env(tmp), "PIP_INDEX_URL": index.url}
    out = subprocess.run([sys.executable, "-c", SCHEDULED, str(recipe)], env=env, cwd=tmp, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.docker
@pytest.mark.slow
def test_a_new_release_becomes_the_next_version_and_the_card_names_it(docker_backend, tmp_path):
    with PackageIndex() as index:
        publish(index, "1.0")
        publish(index, "1.1")
        recipe = cli_runs.recipe(tmp_path, [f"pypi:{NAME}@latest:2"], name="latest", candidates=2, reference_runs=1)
        store, journal = DatasetStore(tmp_path / "datasets" / "swe"), tmp_path / "work" / "journal.jsonl"
        _scheduled_run(tmp_path, recipe, index)
        assert store.versions() == ["v1"]
        old = {f"pypi:{NAME}==1.1", f"pypi:{NAME}==1.0"}
        assert set(store.manifest("v1")["lineage"]["sources"]) == old
        _scheduled_run(tmp_path, recipe, index)
        assert store.versions() == ["v1"], "no new release, no new version"
        done = len(journal.read_text().splitlines())

        publish(index, "1.2")
        _scheduled_run(tmp_path, recipe, index)
        assert store.versions() == ["v1", "v2"] and store.verify("v2") == []
        manifest = store.manifest("v2")
        assert manifest["parent"] == "v1"
        assert set(manifest["lineage"]["sources"]) == {f"pypi:{NAME}==1.2", f"pypi:{NAME}==1.1"}
        card = (store.root / "v2" / "README.md").read_text()
        assert "## What is new since v1" in card
        assert f"- new sources: `pypi:{NAME}==1.2`" in card and f"- dropped sources: `pypi:{NAME}==1.0`" in card
        # finished work reused: what ran after the release is the new release's work only, never a step run before
        entries = [json.loads(line) for line in journal.read_text().splitlines()]
        assert entries[done:] and len({e["key"] for e in entries}) == len(entries)
