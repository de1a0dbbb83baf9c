"""Domain rules: job-type validation, retry policy, statuses. No database."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from service import errors
from service.domain import jobtypes, retry
from service.domain.retry import RetryPolicy
from service.domain.status import Status


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
    policy = RetryPolicy(backoff=retry.exponential(base=1, cap=5, jitter=0))
    assert [policy.delay(n).total_seconds() for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_a_fixed_backoff_waits_the_same_every_time():
    policy = RetryPolicy(backoff=retry.fixed(3))
    assert [policy.delay(n).total_seconds() for n in range(1, 5)] == [3, 3, 3, 3]


def test_a_list_of_delays_is_used_in_order_and_the_last_repeated():
    policy = RetryPolicy(max_attempts=6, backoff=retry.delays(1, 5, 15))
    assert [policy.delay(n).total_seconds() for n in range(1, 6)] == [1, 5, 15, 15, 15]


def test_jitter_only_shortens_the_wait_by_at_most_its_share():
    policy = RetryPolicy(backoff=retry.exponential(base=10, jitter=0.2))
    rng = random.Random(7)
    delays = [policy.delay(1, rng).total_seconds() for _ in range(200)]
    assert all(8 <= d <= 10 for d in delays)
    assert len(set(delays)) > 100


def test_any_error_is_retried_but_permanent_ones():
    policy = RetryPolicy()
    assert policy.is_retryable(errors.TransientJobError("later"))
    assert policy.is_retryable(ConnectionResetError())
    assert policy.is_retryable(ValueError("a bug, or bad input: BullMQ retries it too"))
    assert not policy.is_retryable(errors.PermanentJobError("never"))
    assert not policy.is_retryable(errors.JobFailure("explicit", retryable=False))


def test_the_types_a_job_type_lists_as_permanent_are_not_retried():
    policy = retry.policy_of(None, permanent=(KeyError,))
    assert not policy.is_retryable(KeyError("x"))
    assert policy.is_retryable(ValueError("x"))


def test_timeouts_are_retried_unless_the_type_says_otherwise():
    assert RetryPolicy().is_retryable(errors.JobTimeout(1))
    assert not retry.policy_of(None, retry_timeouts=False).is_retryable(errors.JobTimeout(1))


@pytest.mark.parametrize(("retry_value", "attempts"), [(None, 3), (0, 1), (4, 5), (False, 1)])
def test_retry_as_procrastinate_counts_it_retries_plus_the_first_run(retry_value, attempts):
    assert retry.policy_of(retry_value).max_attempts == attempts


def test_a_procrastinate_retry_strategy_becomes_a_policy():
    import procrastinate

    policy = retry.policy_of(procrastinate.RetryStrategy(max_attempts=2, wait=5))
    assert (policy.max_attempts, policy.backoff.kind, policy.delay(1).total_seconds()) == (
        3, "fixed", 5)
    with pytest.raises(ValueError, match="permanent_errors"):
        retry.policy_of(procrastinate.RetryStrategy(max_attempts=2,
                                                    retry_exceptions={ValueError}))


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
    policy = RetryPolicy(backoff=retry.exponential(base=1, cap=60, jitter=0.2))
    own = policy.with_backoff({"base_seconds": 3, "cap_seconds": 10, "jitter": 0})
    assert [own.delay(n).total_seconds() for n in (1, 2, 3)] == [3, 6, 10]
    assert policy.with_backoff(None) is policy
    assert policy.with_backoff({"jitter": 0}).base == timedelta(seconds=1)


def test_a_job_can_choose_another_kind_of_backoff():
    policy = RetryPolicy(backoff=retry.exponential(base=1))
    assert [policy.with_backoff({"delays": [1, 5], "jitter": 0}).delay(n).total_seconds()
            for n in (1, 2, 3)] == [1, 5, 5]
    fixed = policy.with_backoff({"kind": "fixed", "base_seconds": 2, "jitter": 0})
    assert [fixed.delay(n).total_seconds() for n in (1, 2, 3)] == [2, 2, 2]


def test_the_worker_runs_exactly_the_declared_job_types():
    # The handlers are keyed by the declarations' names: none undeclared, none missing.
    from workers import app as worker_app
    from workers.sandbox import Sandbox
    from workers.tasks.declared import Threads

    handlers = worker_app.make_handlers(Sandbox(size=1), Threads(1))
    assert sorted(handlers) == jobtypes.REGISTRY.names()
