"""A write whose reply does not say "applied" is not a success: a wait=true write answered `Acknowledged` (in the WAL
only, as a server under load or a proxy may answer) is an unknown outcome, sent again like a timeout, within the
outage budget whatever max_attempts says, and never acknowledged to the lane meanwhile — so the ordered commit cannot
move a cursor past a write that might still fail.

Against a stub Qdrant in this process: a grpc.aio server implementing Points.Upsert / UpdateVectors with
qdrant-client's own servicer base class, answering as each test scripts it (a gRPC server, not Ray)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from qdrant_client import grpc as pb

from engine.errors import QdrantUnavailable
from engine.flow.page import PageBody
from engine.flow.sink import QdrantSink, SinkSpec
from engine.qdrant import retry, values, wire
from engine.qdrant.connection import Endpoint
from tests.unit.test_retry import FakeRpcError

ACK, DONE = pb.UpdateStatus.Acknowledged, pb.UpdateStatus.Completed


class StubPoints(pb.PointsServicer):
    """Answers the n-th write with `script[n]` (the last entry once the script runs out); keeps every request."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.requests: list = []

    def _answer(self, request) -> pb.PointsOperationResponse:
        status = self.script[min(len(self.requests), len(self.script) - 1)]
        self.requests.append(request)
        return pb.PointsOperationResponse(result=pb.UpdateResult(operation_id=len(self.requests), status=status))

    async def Upsert(self, request, context):  # noqa: N802 - the gRPC method's name
        return self._answer(request)

    async def UpdateVectors(self, request, context):  # noqa: N802
        return self._answer(request)


async def _with_server(script: list[int], run):
    """Start a stub server on a free local port, run `run(endpoint, servicer)`, stop the server."""
    servicer = StubPoints(script)
    server = grpc.aio.server()
    pb.add_PointsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await run(Endpoint("127.0.0.1", port, timeout_s=10.0), servicer), servicer
    finally:
        await server.stop(None)


def _page() -> tuple[PageBody, np.ndarray]:
    ids = [1, 2, 3]
    blobs = [pb.PointStruct(id=wire.point_id(i), payload=values.payload_from_python({"text": f"t{i}"}))
             .SerializeToString() for i in ids]
    return PageBody(ids=ids, blobs=blobs, text_index=[0, 1, 2]), np.ones((3, 4), dtype=np.float32)


def _write(script: list[int], mode: str, policy: retry.RetryPolicy, wait: bool = True):
    async def run(endpoint, servicer):
        sink = QdrantSink(endpoint, SinkSpec(collection="dst", vector_name="v", mode=mode, wait=wait), policy=policy)
        try:
            return await sink.write(0, 0, *_page())
        finally:
            await sink.close()

    return asyncio.run(_with_server(script, run))


# max_attempts=1: an unknown outcome must not be bounded by it (only by the outage budget).
PATIENT = retry.RetryPolicy(max_attempts=1, base_delay_s=0.001, max_delay_s=0.002, deadline_s=0.5,
                            outage_budget_s=30.0)


@pytest.mark.parametrize("mode,request_type", [("insert_only", pb.UpsertPoints),
                                               ("update_vectors", pb.UpdatePointVectors)])
def test_acknowledged_is_retried_until_the_server_says_completed(mode, request_type):
    ack, servicer = _write([ACK, ACK, DONE], mode, PATIENT)
    assert len(servicer.requests) == 3  # the same write, sent again until applied
    first = servicer.requests[0]
    assert isinstance(first, request_type) and first.wait is True
    assert all(r == first for r in servicer.requests)  # the very same request: safe to repeat (idempotent)
    assert ack.retries == {"not_applied": 2} and ack.written == 3


def test_a_write_that_is_never_applied_ends_in_an_error_not_an_ack():
    budget = retry.RetryPolicy(max_attempts=1000, base_delay_s=0.001, max_delay_s=0.002, deadline_s=1000.0,
                               outage_budget_s=0.05)
    with pytest.raises(QdrantUnavailable, match="Acknowledged, not Completed"):
        _write([ACK], "insert_only", budget)


def test_without_wait_an_acknowledged_write_is_what_was_asked_for():
    ack, servicer = _write([ACK], "insert_only", PATIENT, wait=False)
    assert len(servicer.requests) == 1 and servicer.requests[0].wait is False and ack.retries == {}


def test_completed_at_once_is_one_request():
    ack, servicer = _write([DONE], "insert_only", PATIENT)
    assert len(servicer.requests) == 1 and ack.retries == {}


class Clock:
    """Injected time: a sleep moves it, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _unknown_calls(outcomes: list[bool], policy: retry.RetryPolicy, clock: Clock, stats: retry.RetryStats):
    """call_async over a call that raises UnknownOutcome while `outcomes` says False."""
    calls = []

    async def call():
        calls.append(clock.now)
        if not outcomes[min(len(calls), len(outcomes)) - 1]:
            raise retry.UnknownOutcome("the server answered Acknowledged, not Completed, to a wait=true write")
        return "applied"

    events: list[retry.RetryEvent] = []
    result = asyncio.run(retry.call_async(call, what="write", address="a:1", policy=policy, stats=stats,
                                          sleep=clock.sleep, clock=clock, on_retry=events.append))
    return result, calls, events


def test_an_unknown_outcome_waits_within_the_outage_budget_not_max_attempts():
    clock, stats = Clock(), retry.RetryStats()
    policy = retry.RetryPolicy(max_attempts=2, base_delay_s=1.0, max_delay_s=4.0, deadline_s=5.0,
                               outage_budget_s=100.0)
    result, calls, events = _unknown_calls([False] * 10 + [True], policy, clock, stats)
    assert result == "applied" and len(calls) == 11  # past max_attempts (2) and deadline_s (5 s)
    assert stats.snapshot() == {"not_applied": 10}
    assert [e.cause for e in events] == ["not_applied"] * 10 and all(e.code == grpc.StatusCode.UNKNOWN
                                                                     for e in events)
    assert stats.waiting() is None  # the call is over: nobody waits any more


def test_an_unknown_outcome_past_the_budget_is_a_one_line_error():
    clock, stats = Clock(), retry.RetryStats()
    policy = retry.RetryPolicy(max_attempts=1000, base_delay_s=1.0, max_delay_s=2.0, deadline_s=1000.0,
                               outage_budget_s=10.0)
    with pytest.raises(QdrantUnavailable) as err:
        _unknown_calls([False], policy, clock, stats)
    assert "\n" not in str(err.value) and "raise retry.outage_budget_s" in str(err.value)
    assert clock.now <= policy.outage_budget_s  # the last try lands when the budget ends, not after
    assert stats.snapshot()["not_applied"] >= 5


def test_an_unknown_outcome_reports_who_waits_meanwhile():
    clock, stats = Clock(), retry.RetryStats()
    seen = []

    async def sleep(seconds):
        seen.append(stats.waiting())
        await clock.sleep(seconds)

    async def call():
        if len(seen) < 2:
            raise retry.UnknownOutcome("Acknowledged")
        return 1

    policy = retry.RetryPolicy(base_delay_s=1.0, max_delay_s=1.0, outage_budget_s=100.0)
    asyncio.run(retry.call_async(call, what="w", address="a", policy=policy, stats=stats, sleep=sleep, clock=clock))
    assert [w.cause for w in seen] == ["NOT_APPLIED", "NOT_APPLIED"] and all(w.calls == 1 for w in seen)
    assert stats.waiting() is None


Refused = FakeRpcError  # a server's refusal: code, details and trailing metadata


def _scripted(answers: list, clock) -> tuple:
    """A call that raises `answers` in turn then returns "ok", and a sleep that moves `clock` and records each wait."""
    waits: list[float] = []

    def call():
        if answers:
            raise answers.pop(0)
        return "ok"

    def sleep(seconds):
        waits.append(seconds)
        clock.now += seconds

    return call, sleep, waits


def _once(err: grpc.RpcError, policy: retry.RetryPolicy | None = None):
    """call() over a call that fails with `err` every time: the error it ends in, and how often it tried."""
    clock, tries = Clock(), []

    def call():
        tries.append(clock.now)
        raise err

    def sleep(seconds):
        clock.now += seconds

    with pytest.raises(Exception) as raised:
        retry.call(call, what="write", address="a:1", policy=policy or retry.RetryPolicy(), sleep=sleep, clock=clock)
    return raised.value, len(tries)


@pytest.mark.parametrize("err,kind", [
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (70 vs. 64)"), "ReplyTooLarge"),
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (70 vs. 64)"), "ReplyTooLarge"),
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "request is larger than rate limiter capacity"),
     "OverRateLimitCapacity"),
    (Refused(grpc.StatusCode.INVALID_ARGUMENT, "Wrong input: vector dimension error"), "QdrantRequestError"),
    (Refused(grpc.StatusCode.NOT_FOUND, "No point with id 7 found"), "PointNotFound"),
    (Refused(grpc.StatusCode.NOT_FOUND, "Collection `x` not found"), "NotFound"),
    (Refused(grpc.StatusCode.UNAUTHENTICATED, "bad key"), "PreconditionError"),
])
def test_a_definite_answer_is_raised_at_once_not_waited_out(err, kind):
    error, tries = _once(err)
    assert tries == 1 and type(error).__name__ == kind and "\n" not in str(error)


def test_an_outage_and_a_rate_limit_are_waited_out_but_other_trouble_is_bounded_by_max_attempts():
    policy = retry.RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=1.0, deadline_s=1000.0,
                               outage_budget_s=60.0)
    _, tries = _once(Refused(grpc.StatusCode.ABORTED, "conflict"), policy)
    assert tries == 3
    error, tries = _once(Refused(grpc.StatusCode.UNAVAILABLE, "down"), policy)
    assert tries > 3 and isinstance(error, QdrantUnavailable) and "did not answer for" in str(error)
    error, tries = _once(Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limiting exceeded",
                                 trailers=(("retry-after", "2"),)), policy)
    assert 20 <= tries <= 31 and "rate limits" in str(error)  # waits the server's 2 s each time, for 60 s


def test_the_servers_retry_after_is_waited_never_less_than_the_base_delay():
    clock = Clock()
    call, sleep, waits = _scripted(
        [Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limiting exceeded", (("retry-after", "3"),)),
         Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limiting exceeded", (("retry-after", "0"),)),
         Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limiting exceeded", (("Retry-After", "bad"),))], clock)

    policy = retry.RetryPolicy(base_delay_s=0.5, max_delay_s=0.5, outage_budget_s=100.0)
    assert retry.call(call, what="w", address="a", policy=policy, sleep=sleep, clock=clock) == "ok"
    assert waits[0] == 3.0 and waits[1] == 0.5 and 0.0 <= waits[2] <= 0.5


def test_backoff_doubles_per_attempt_up_to_its_cap():
    class Top:
        def uniform(self, lo, hi):
            return hi

    policy = retry.RetryPolicy(base_delay_s=0.25, max_delay_s=3.0)
    assert [policy.backoff(n, Top()) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff(10_000, Top()) == 3.0


class Top:
    """A jitter that always draws the top of its range: backoffs become exact."""

    def uniform(self, lo, hi):
        return hi


def test_the_last_try_lands_when_the_outage_budget_ends():
    clock, tries = Clock(), []

    def call():
        tries.append(clock.now)
        raise retry.UnknownOutcome("Acknowledged")

    def sleep(seconds):
        clock.now += seconds

    policy = retry.RetryPolicy(base_delay_s=4.75, max_delay_s=4.75, outage_budget_s=10.0)
    with pytest.raises(QdrantUnavailable):
        retry.call(call, what="w", address="a", policy=policy, sleep=sleep, clock=clock, rng=Top())
    assert tries == [0.0, 4.75, 9.5, 10.0]  # the half second left is used, not given up


def test_a_retry_after_counts_only_on_a_rate_limit():
    clock = Clock()
    call, sleep, waits = _scripted([Refused(grpc.StatusCode.UNAVAILABLE, "down", (("retry-after", "30"),))], clock)

    policy = retry.RetryPolicy(base_delay_s=1.0, max_delay_s=1.0, outage_budget_s=100.0)
    retry.call(call, what="w", address="a", policy=policy, sleep=sleep, clock=clock, rng=Top())
    assert waits == [1.0]


def test_a_try_that_would_land_exactly_on_the_deadline_is_still_made():
    clock, tries = Clock(), []

    def call():
        tries.append(clock.now)
        if len(tries) < 4:
            raise Refused(grpc.StatusCode.ABORTED, "conflict")
        return "ok"

    def sleep(seconds):
        clock.now += seconds

    policy = retry.RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=1.0, deadline_s=3.0)
    assert retry.call(call, what="w", address="a", policy=policy, sleep=sleep, clock=clock, rng=Top()) == "ok"
    assert tries == [0.0, 1.0, 2.0, 3.0]  # the third wait ends at 3.0 = deadline_s: allowed, not past it


@pytest.mark.parametrize("err,kind,says", [
    (Refused(grpc.StatusCode.UNAUTHENTICATED, "bad key"), "PreconditionError", "QDRANT_API_KEY or qdrant.api_key"),
    (Refused(grpc.StatusCode.NOT_FOUND, "Collection `x` doesn't exist!"), "NotFound", ": Collection `x` doesn't"),
    (Refused(grpc.StatusCode.NOT_FOUND, ""), "NotFound", "w: not found;"),
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (70 vs. 64)"), "ReplyTooLarge",
     "exceeds the gRPC size limit"),
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than rate limiter capacity"), "OverRateLimitCapacity",
     "pipeline.upload_batch"),
    # a plain rate limit (retried by call()) translated directly is an outage to wait for, not a request too big
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limiting exceeded"), "QdrantUnavailable",
     "retry.max_attempts / retry.deadline_s"),
    (Refused(grpc.StatusCode.INVALID_ARGUMENT, "larger than rate limiter capacity"), "QdrantRequestError",
     "(INVALID_ARGUMENT: "),
    (Refused(None, "no status at all"), "QdrantRequestError", "(ERROR: no status at all)"),
])
def test_translate_names_the_kind_of_failure_and_the_setting_that_fixes_it(err, kind, says):
    error = retry.translate(err, "w", "a:1")
    assert type(error).__name__ == kind and says in str(error)


def test_status_and_details_of_errors_that_are_not_grpc_answers():
    class NoDetails(grpc.RpcError):
        def details(self):
            return None

    class Broken(grpc.RpcError):
        def code(self):
            raise RuntimeError("no call")

        def details(self):
            raise RuntimeError("no call")

    assert retry.status_of(ValueError("boom")) is None and retry.details_of(ValueError("boom")) == "boom"
    assert retry.status_of(Broken()) is None and retry.details_of(Broken()) == ""
    assert retry.details_of(NoDetails()) == ""
    assert retry.details_of(Refused(grpc.StatusCode.ABORTED, "  conflict \n")) == "conflict"


@pytest.mark.parametrize("err,ends", [
    (Refused(grpc.StatusCode.PERMISSION_DENIED, "no"), "set the right key in QDRANT_API_KEY or qdrant.api_key"),
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than rate limiter capacity"),
     "send fewer points per request (pipeline.upload_batch, or fewer ids per read)"),
    (Refused(grpc.StatusCode.UNAVAILABLE, "down"),
     "check the server is up and reachable, or raise retry.max_attempts / retry.deadline_s"),
])
def test_a_translated_error_ends_with_what_to_do(err, ends):
    assert str(retry.translate(err, "w", "a:1")).endswith(ends)
