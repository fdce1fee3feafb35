"""The recipe's `model:` section and the endpoint service that flows open around their stages."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import ValidationError

from trajfactory.settings import BUILTIN_TINY, ClusterConfig, ModelConfig
from trajfactory.models.server import is_loopback, process_group_alive
from trajfactory.models.service import ModelEndpoint, address_toward, model_endpoint, resolve_model_dir


def test_model_config_needs_exactly_one_source():
    assert ModelConfig().serve == BUILTIN_TINY
    with pytest.raises(ValidationError, match="exactly one of `serve:`"):
        ModelConfig(serve="some/dir", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValidationError, match="exactly one of `serve:`"):
        ModelConfig(serve=None)
    with pytest.raises(ValidationError, match="not an http"):
        ModelConfig(serve=None, base_url="127.0.0.1:8000/v1")


def test_a_directory_without_a_model_is_named_in_the_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=rf"{tmp_path}.*no config.json.*builtin:tiny"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(ValueError, match="no config.json"):
        with model_endpoint(ModelConfig(serve=str(tmp_path)), tmp_path / "work"):
            pass


def test_external_endpoint_reads_its_key_from_the_named_variable_and_never_shows_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_PROVIDER_KEY", "sk-secret-123")
    cfg = ModelConfig(serve=None, base_url="http://127.0.0.1:9/v1", name="m", api_key_env="MY_PROVIDER_KEY",
                      max_concurrency=3, gpu_hour_price=2.0)
    with model_endpoint(cfg, tmp_path) as ep:
        assert not ep.served and ep.base_url == "http://127.0.0.1:9/v1"
        assert "sk-secret" not in ep.model_dump_json()  # the endpoint travels as a flow parameter
        client = ep.client()
        assert client.max_concurrency == 3 and client.gpu_hour_price == 2.0 and client.model == "m"
        assert "sk-secret" not in repr(client)
        # nothing listens on port 9: the error says so without the key
        with pytest.raises(Exception) as err:
            asyncio.run(client.chat([{"role": "user", "content": "hi"}], max_tokens=1))
        assert "sk-secret" not in str(err.value)


@pytest.mark.vllm
def test_served_replicas_live_exactly_as_long_as_the_block_and_share_the_requests(tiny_model, tmp_path):
    """With a `cluster:` whose head is on another machine, the replicas are reached at this machine's address toward
    it (and listen on every interface unless that address is loopback, on a machine with no route out)."""
    cfg = ModelConfig(serve=str(tiny_model), name="tiny-served", startup_timeout_s=600, replicas=2)
    head = "198.51.100.1:6379"  # TEST-NET-2: nothing answers there; only the route toward it is read
    outward = address_toward(head)
    with pytest.raises(RuntimeError, match="stage failed"):
        with model_endpoint(cfg, tmp_path / "work", ClusterConfig(address=head)) as ep:
            assert isinstance(ep, ModelEndpoint) and ep.served and ep.model_dir == str(tiny_model)
            assert isinstance(ep.base_url, list) and len(set(ep.base_url)) == 2
            assert all(url.startswith(f"http://{outward}:") for url in ep.base_url)
            # beyond loopback every request carries the run's fresh key; one without it is refused
            key = ep.api_key.get_secret_value() if ep.api_key else None
            assert (key is None) == is_loopback(outward)
            assert key is None or key not in repr(ep) and key not in ep.model_dump_json()
            auth = {"Authorization": f"Bearer {key}"} if key else {}
            for url in ep.base_url:
                assert [m["id"] for m in httpx.get(f"{url}/models", headers=auth, timeout=10).json()["data"]] == [
                    "tiny-served"]
                if key:
                    assert httpx.get(f"{url}/models", timeout=10).status_code == 401
                    assert httpx.get(f"{url}/models", headers={"Authorization": "Bearer wrong"},
                                     timeout=10).status_code == 401
            assert key is None or all(key not in " ".join(_vllm_cmd(url)) for url in ep.base_url)  # not in argv
            client = ep.client()

            async def chats():
                async with client:
                    return await asyncio.gather(*(client.chat([{"role": "user", "content": f"hi {i}"}], max_tokens=2)
                                                  for i in range(6)))

            assert len(asyncio.run(chats())) == 6
            assert all(n >= 1 for n in client.replicas.sent) and sum(client.replicas.failed) == 0
            pgids = set().union(*(_vllm_groups(url.rsplit(":", 1)[1].split("/")[0]) for url in ep.base_url))
            assert len(pgids) >= 2
            listen = {_vllm_host(url.rsplit(":", 1)[1].split("/")[0]) for url in ep.base_url}
            assert listen == {"127.0.0.1" if is_loopback(outward) else "0.0.0.0"}
            raise RuntimeError("stage failed")
    assert not any(process_group_alive(g) for g in pgids)
    assert all((tmp_path / "work" / "logs" / f"vllm-{i}.log").stat().st_size > 0 for i in (0, 1))
    for url in ep.base_url:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/models", timeout=2)


def _vllm_cmd(url_or_port: str) -> list[str]:
    """The command line of the vLLM server on a port (or a base URL's port), from /proc."""
    from pathlib import Path

    port = url_or_port.rsplit(":", 1)[1].split("/")[0] if ":" in url_or_port else url_or_port
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode().split("\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in cmd and port in cmd:
            return cmd
    return []


def _vllm_host(port: str) -> str:
    """The `--host` the vLLM server on `port` was started with."""
    cmd = _vllm_cmd(port)
    return cmd[cmd.index("--host") + 1] if cmd else ""


def _vllm_groups(port: str) -> set[int]:
    """Process groups of the vLLM servers listening on `port` (from /proc, no extra tools)."""
    import os
    from pathlib import Path

    groups = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in cmd and port.encode() in cmd:
            groups.add(os.getpgid(int(proc.name)))
    return groups


def test_a_served_models_key_travels_with_its_endpoint_and_never_in_its_text(monkeypatch):
    """A cluster node gets the endpoint pickled (Ray): the served model's key must come with it, while its repr and
    JSON (logs, cards) show none; a user's own key stays in the environment variable."""
    import pickle

    from pydantic import SecretStr

    monkeypatch.delenv("TRAJFACTORY_API_KEY", raising=False)
    served = ModelEndpoint(base_url="http://192.0.2.2:8000/v1", settings=ModelConfig(), served=True,
                           api_key=SecretStr("s3cret-key"))
    there = pickle.loads(pickle.dumps(served))
    assert there.client()._api_key == "s3cret-key"
    assert "s3cret-key" not in repr(there) + there.model_dump_json() + repr(there.client())
    monkeypatch.setenv("TRAJFACTORY_API_KEY", "users-own")
    external = ModelEndpoint.at("http://192.0.2.3:8000/v1", "m")
    assert external.client()._api_key == "users-own" and served.client()._api_key == "s3cret-key"
