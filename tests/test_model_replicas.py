"""One model behind several replicas: the client spreads requests over them by requests in flight, and a replica
that stops answering is skipped at once (no backoff while another answers), through fault proxies in front of the
session's real vLLM server."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from fault_proxy import FaultProxy
from trajfactory.models.replicas import Replicas
from trajfactory.models.service import ModelEndpoint
from trajfactory.settings import ModelConfig


def test_replicas_take_turns_by_load_and_a_failed_one_sits_out():
    r = Replicas(["http://a/v1/", "http://b/v1"], cooldown_s=60)
    assert r.urls == ["http://a/v1", "http://b/v1"]
    first, second = r.pick(), r.pick()
    assert {first, second} == {0, 1}  # the idle one is picked while the other is busy
    r.done(first, healthy=True)
    r.done(second, healthy=False)
    assert [r.pick() for _ in range(3)] == [first, first, first] and r.failed[second] == 1
    assert not r.another_up(first)


def test_replica_urls_are_checked():
    assert ModelConfig(serve=None, base_url=["http://a:1/v1", "https://b/v1"]).base_url == ["http://a:1/v1", "https://b/v1"]
    for bad in ([], ["http://a/v1", "ftp://b"]):
        with pytest.raises(ValidationError, match="base URL|http"):
            ModelConfig(serve=None, base_url=bad)


def _chats(client, n: int) -> list:
    async def go():
        async with client:
            return await asyncio.gather(*(client.chat([{"role": "user", "content": f"say {i}"}], max_tokens=2)
                                          for i in range(n)))

    return asyncio.run(go())


@pytest.mark.vllm
def test_requests_spread_over_replicas_and_fail_over_when_one_dies(vllm_server):
    with FaultProxy(vllm_server.base_url) as a, FaultProxy(vllm_server.base_url) as b:
        ep = ModelEndpoint.at([a.base_url, b.base_url], "tiny", max_concurrency=4)
        client = ep.client()
        assert len(_chats(client, 8)) == 8
        assert a.seen["ok"] >= 2 and b.seen["ok"] >= 2  # both replicas served
        b.down()  # as if its server were killed
        client = ep.client(max_retries=2, backoff_base_s=30)  # a backoff would make this test wait minutes
        assert len(_chats(client, 6)) == 6
        assert client.replicas.failed[1] >= 1 and client.replicas.sent[0] >= 6
        assert all(r.replica == 0 and r.error is None for r in client.requests)
