"""Random samples and counts of a source in strict mode (engine/qdrant/client.py `sample_ids`, the shared helpers of
engine/app/preconditions.py): a sample stays inside the collection's `max_query_limit`; a strict-mode refusal is not
read as "this server cannot sample" (the fallback scan would be refused by the same limit), and says which limit and
the fix; the fallback scan of a server without random sampling keeps its pages inside a known query limit; the count
is exact only where `search_allow_exact` allows it. The fake server answers with Qdrant's wording
(lib/collection/src/operations/verification/mod.rs check_limit_opt, CollectionError::strict_mode)."""

from __future__ import annotations

import logging

import grpc
import pytest
from qdrant_client import grpc as pb

from engine import tunables
from engine.app.preconditions import count_points, range_splitter
from engine.errors import QdrantRequestError
from engine.flow.shards import SampleSplitter
from engine.qdrant import wire
from engine.qdrant.client import SCAN_PAGE, QdrantGrpc
from engine.qdrant.connection import Endpoint
from tests.unit.test_retry import FakeRpcError

IDS = list(range(1, 3001))


def strict_config(query_limit: int | None = None, *, exact: bool | None = None,
                  enabled: bool = True) -> pb.StrictModeConfig:
    cfg = pb.StrictModeConfig(enabled=enabled)
    if query_limit is not None:
        cfg.max_query_limit = query_limit
    if exact is not None:
        cfg.search_allow_exact = exact
    return cfg


def refusal(error: str, solution: str) -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, f"Bad request: {error}. Help: {solution}")


class FakeServer:
    """Points and Collections stubs over IDS: Query(sample=random), Scroll, Count and Get, refusing what the
    collection's strict mode refuses. `sampling` False: a server older than random sampling (`missing` says how
    it answers: UNIMPLEMENTED before Query existed, INVALID_ARGUMENT for a Query variant it does not know)."""

    def __init__(self, strict: pb.StrictModeConfig | None = None, *, sampling: bool = True,
                 missing: grpc.StatusCode = grpc.StatusCode.UNIMPLEMENTED) -> None:
        self.strict = strict
        self.sampling, self.missing = sampling, missing
        self.queries: list[int] = []  # the `limit` of each Query
        self.scrolls: list[int] = []  # the `limit` of each Scroll
        self.counts: list[bool] = []  # `exact` of each Count

    def _check_limit(self, limit: int) -> None:
        cfg = self.strict
        if cfg is not None and cfg.enabled and cfg.HasField("max_query_limit") and limit > cfg.max_query_limit:
            raise refusal(f'Limit exceeded {limit} > {cfg.max_query_limit} for "limit"',
                          f'Reduce the "limit" parameter to or below {cfg.max_query_limit}.')

    # --- Points ---
    def Query(self, req, metadata=None, timeout=None):
        self.queries.append(req.limit)
        if not self.sampling:
            raise FakeRpcError(self.missing, "Method not found" if self.missing == grpc.StatusCode.UNIMPLEMENTED
                               else "Wrong input: query variant is missing")
        self._check_limit(req.limit)
        step = max(1, len(IDS) // max(1, req.limit))
        return pb.QueryResponse(result=[pb.ScoredPoint(id=wire.point_id(i)) for i in IDS[::step][:req.limit]])

    def Scroll(self, req, metadata=None, timeout=None):
        self.scrolls.append(req.limit)
        self._check_limit(req.limit)
        start = int(wire.id_value(req.offset)) if req.HasField("offset") else IDS[0]
        page = [i for i in IDS if i >= start][:req.limit + 1]
        reply = pb.ScrollResponse(result=[pb.RetrievedPoint(id=wire.point_id(i)) for i in page[:req.limit]])
        if len(page) > req.limit:
            reply.next_page_offset.CopyFrom(wire.point_id(page[-1]))
        return reply

    def Count(self, req, metadata=None, timeout=None):
        self.counts.append(req.exact)
        cfg = self.strict
        if req.exact and cfg is not None and cfg.enabled and cfg.HasField("search_allow_exact") \
                and not cfg.search_allow_exact:
            raise refusal("Exact search disabled!", "Set exact=false.")
        return pb.CountResponse(result=pb.CountResult(count=len(IDS)))

    # --- Collections ---
    def Get(self, req, metadata=None, timeout=None):
        return pb.GetCollectionInfoResponse(result=self.info())

    def info(self) -> pb.CollectionInfo:
        info = pb.CollectionInfo()
        if self.strict is not None:
            info.config.strict_mode_config.CopyFrom(self.strict)
        return info


def client_of(server: FakeServer) -> QdrantGrpc:
    client = QdrantGrpc(Endpoint("127.0.0.1", 9))  # a channel is opened lazily: nothing is dialled
    client.points = server  # type: ignore[assignment]
    client.collections = server  # type: ignore[assignment]
    return client


def test_a_query_limit_refusal_names_the_limit_and_the_fix_and_scans_nothing(caplog):
    server = FakeServer(strict_config(1024))
    client = client_of(server)
    with caplog.at_level(logging.INFO, logger="engine.qdrant.client"):
        with pytest.raises(QdrantRequestError) as err:
            client.sample_ids("docs", 8192)
    message = str(err.value)
    assert "\n" not in message
    assert "max_query_limit 1,024" in message and "asked for 8,192" in message
    assert "ask for at most 1,024" in message and "strict_mode_config.max_query_limit" in message
    assert server.scrolls == []  # no 10,000-id scan that the same limit would refuse
    assert "random sampling unavailable" not in caplog.text


def test_other_strict_mode_refusals_are_raised_as_they_are():
    server = FakeServer()

    def refuse(req, metadata=None, timeout=None):
        raise refusal('Limit exceeded 90 > 30 for "timeout"', 'Reduce the "timeout" parameter to or below 30.')

    server.Query = refuse  # type: ignore[method-assign]
    with pytest.raises(QdrantRequestError, match='for "timeout"'):
        client_of(server).sample_ids("docs", 100)
    assert server.scrolls == []


def test_a_sample_inside_the_limit_is_one_query():
    server = FakeServer(strict_config(1024))
    ids = client_of(server).sample_ids("docs", 1024)
    assert len(ids) == 1024 and server.queries == [1024] and server.scrolls == []


@pytest.mark.parametrize("missing", [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT])
def test_a_server_without_random_sampling_is_scanned_in_pages_of_the_default_size(missing, caplog):
    server = FakeServer(sampling=False, missing=missing)
    with caplog.at_level(logging.INFO, logger="engine.qdrant.client"):
        ids = client_of(server).sample_ids("docs", 500)
    assert len(set(ids)) == 500 and set(ids) <= set(IDS)
    assert server.scrolls == [SCAN_PAGE]  # 3,000 ids: one page
    assert "random sampling unavailable" in caplog.text


def test_the_fallback_scan_keeps_its_pages_inside_a_known_query_limit():
    server = FakeServer(strict_config(700), sampling=False, missing=grpc.StatusCode.INVALID_ARGUMENT)
    ids = client_of(server).sample_ids("docs", 200)
    assert len(set(ids)) == 200
    assert server.scrolls == [700] * 5  # 3,000 ids in pages of 700, none refused


def test_a_disabled_strict_mode_bounds_nothing():
    server = FakeServer(strict_config(700, enabled=False), sampling=False)
    client_of(server).sample_ids("docs", 200)
    assert server.scrolls == [SCAN_PAGE]


@pytest.mark.parametrize("strict,exact", [
    (None, True),
    (strict_config(exact=True), True),
    (strict_config(exact=False, enabled=False), True),
    (strict_config(1024, exact=False), False),
])
def test_count_points_is_exact_only_where_strict_mode_allows_it(strict, exact):
    server = FakeServer(strict)
    assert count_points(client_of(server), "docs", server.info()) == len(IDS)
    assert server.counts == [exact]


def test_the_range_splitter_samples_inside_the_source_query_limit():
    server = FakeServer(strict_config(1024, exact=False))
    client = client_of(server)
    splitter = range_splitter(client, "docs", server.info(), count_points(client, "docs", server.info()))
    picked = splitter.pick(None, None, None)
    assert picked is not None and server.queries == [1024]
    estimate, at = picked
    assert abs(estimate - len(IDS)) <= len(IDS) // 100 and isinstance(at, int) and IDS[0] < at < IDS[-1]
    # What the catch-up asked for before: the default sample, which the same limit refuses with the fix named.
    with pytest.raises(QdrantRequestError, match="max_query_limit 1,024"):
        SampleSplitter(client, "docs", len(IDS)).pick(None, None, None)


def test_the_range_splitter_keeps_the_default_sample_without_strict_mode():
    server = FakeServer()
    assert range_splitter(client_of(server), "docs", server.info(), len(IDS)).size == tunables.SPLIT_SAMPLE
    assert range_splitter(client_of(server), "docs", None, len(IDS)).size == tunables.SPLIT_SAMPLE


class RandomSampler:
    """sample_ids as Qdrant's random sampling answers it: up to `limit` distinct ids, drawn afresh on every call."""

    def __init__(self, population: int, seed: int = 3) -> None:
        import random

        self.population, self.rng = list(range(population)), random.Random(seed)
        self.asked: list[int] = []

    def sample_ids(self, collection: str, limit: int) -> list[int]:
        self.asked.append(limit)
        return self.rng.sample(self.population, min(limit, len(self.population)))


def test_a_large_sample_is_asked_for_in_chunks_inside_the_limit_and_is_distinct():
    from engine.qdrant.scan import sample_distinct

    sampler = RandomSampler(10_000)
    ids = sample_distinct(sampler, "docs", 2000, chunk=500)  # shortcuts/verify: the chunk is the query limit
    assert len(ids) == len(set(ids)) == 2000
    assert sampler.asked and all(n <= 500 for n in sampler.asked) and len(sampler.asked) >= 4


def test_a_sample_larger_than_the_collection_stops_when_nothing_new_comes():
    from engine.qdrant.scan import sample_distinct

    sampler = RandomSampler(300)
    ids = sample_distinct(sampler, "docs", 2000, chunk=500)
    assert sorted(ids) == list(range(300))
    assert len(sampler.asked) == 4  # the first ask finds all 300, then three that bring nothing new
