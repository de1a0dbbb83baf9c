"""Domain rules: job-type validation, retry policy, statuses. No database."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from service import errors
from service.domain import jobtypes
from service.domain.retry import RetryPolicy
from service.domain.status import Status
from service.settings import Settings


def test_sleep_payload_fills_defaults():
    payload = jobtypes.SYSTEM_SLEEP.validate({"seconds": 2})
    assert (payload.seconds, payload.fail_times) == (2.0, 0)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"seconds": "x"}, "payload.seconds"),
        ({"seconds": -0.5}, "payload.seconds"),
        ({"fail_times": 1.5}, "payload.fail_times"),
        ({"unknown": 1}, "payload"),
        ([], "payload"),
    ],
)
def test_invalid_payload_names_the_field(payload, field):
    with pytest.raises(errors.InvalidRequest) as caught:
        jobtypes.SYSTEM_SLEEP.validate(payload)
    assert [f.field for f in caught.value.fields] == [field]
    assert "system.sleep" in str(caught.value)


def test_unknown_job_type_lists_the_known_ones():
    with pytest.raises(errors.UnknownJobType) as caught:
        jobtypes.get("mesh.nope")
    assert "system.noop" in str(caught.value)


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(base=timedelta(seconds=1), cap=timedelta(seconds=5), jitter=0)
    assert [policy.delay(n).total_seconds() for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_only_shortens_the_wait_by_at_most_its_share():
    policy = RetryPolicy(base=timedelta(seconds=10), jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(1, rng).total_seconds() for _ in range(200)]
    assert all(8 <= d <= 10 for d in delays)
    assert len(set(delays)) > 100


def test_only_transient_errors_are_retried():
    policy = RetryPolicy()
    assert policy.is_retryable(errors.TransientJobError("later"))
    assert policy.is_retryable(ConnectionResetError())
    assert not policy.is_retryable(ValueError("bad input"))
    assert not policy.is_retryable(errors.PermanentJobError("never"))
    assert policy.is_retryable(errors.JobFailure("explicit", retryable=True))


def test_retry_stops_at_max_attempts_and_never_for_permanent_errors():
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(1, retryable=True)
    assert policy.should_retry(2, retryable=True)
    assert not policy.should_retry(3, retryable=True)
    assert not policy.should_retry(1, retryable=False)
    assert policy.should_retry(4, retryable=True, max_attempts=5)


def test_terminal_statuses():
    assert {s for s in Status if s.is_terminal} == {
        Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}


def test_a_job_can_override_base_cap_and_jitter():
    policy = RetryPolicy(base=timedelta(seconds=1), cap=timedelta(seconds=60), jitter=0.2)
    own = policy.with_backoff({"base_seconds": 3, "cap_seconds": 10, "jitter": 0})
    assert [own.delay(n).total_seconds() for n in (1, 2, 3)] == [3, 6, 10]
    assert policy.with_backoff(None) is policy
    assert policy.with_backoff({"jitter": 0}).base == timedelta(seconds=1)


def test_the_worker_runs_exactly_the_declared_job_types():
    # The handlers are keyed by the declarations' names: none undeclared, none missing.
    from workers import app as worker_app

    handlers = worker_app.make_handlers(Settings(), pool=None)
    assert handlers.keys() == jobtypes.REGISTRY.keys()
