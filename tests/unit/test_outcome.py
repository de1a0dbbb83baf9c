"""The outcome of an attempt, decided by service/domain/outcome.py alone."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from service import attempts, errors
from service.domain import outcome
from service.domain.retry import RetryPolicy
from service.domain.status import Outcome

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, base=timedelta(seconds=2), jitter=0)


def decide(happened, attempt=1, max_attempts=3, policy=POLICY):
    return outcome.decide(happened, attempt=attempt, max_attempts=max_attempts, policy=policy,
                          now=NOW, rng=random.Random(7))


def raised(exc: BaseException) -> outcome.Raised:
    """An exception as the worker sees it: raised, with a traceback."""
    try:
        raise exc
    except BaseException as caught:
        return outcome.Raised(caught)


@pytest.mark.parametrize(("value", "result"), [
    ({"a": 1}, {"a": 1}), (None, None), (5, {"value": 5}), ([1, 2], {"value": [1, 2]}),
])
def test_a_returned_value_succeeds_as_an_object(value, result):
    assert decide(outcome.Returned(value)) == outcome.Succeeded(result)


def test_a_transient_error_with_attempts_left_retries_after_the_backoff():
    decision = decide(raised(errors.TransientJobError("try later")), attempt=2)
    assert isinstance(decision, outcome.RetryAt)
    assert decision.at == NOW + timedelta(seconds=4)  # 2 s doubled once, no jitter
    assert (decision.error.type, decision.error.message, decision.error.retryable) == (
        "TransientJobError", "try later", True)
    assert "raise exc" in decision.error.traceback


def test_the_last_attempt_fails_even_when_the_error_is_transient():
    decision = decide(raised(ConnectionError("gone")), attempt=3)
    assert isinstance(decision, outcome.Failed)
    assert decision.error.retryable is True  # it could have passed: the budget ran out


def test_the_jobs_own_max_attempts_beats_the_policys():
    assert isinstance(decide(raised(ConnectionError()), attempt=3, max_attempts=5),
                      outcome.RetryAt)
    assert isinstance(decide(raised(ConnectionError()), attempt=1, max_attempts=1),
                      outcome.Failed)


@pytest.mark.parametrize("exc", [errors.PermanentJobError("bad input"), ValueError("a bug")])
def test_permanent_errors_and_bugs_fail_at_once(exc):
    decision = decide(raised(exc), attempt=1)
    assert isinstance(decision, outcome.Failed)
    assert decision.error.retryable is False
    assert decision.error.type == type(exc).__name__


def test_an_error_without_a_message_is_named_by_its_type():
    assert decide(raised(ValueError())).error.message == "ValueError"


def test_a_timeout_fails_without_retry_and_reads_the_same_whoever_noticed_it():
    by_worker = decide(outcome.TimedOut(0.5))
    by_job = decide(raised(errors.JobTimeout(0.5)))  # e.g. the conversion sandbox's own limit
    assert by_worker == by_job
    assert by_worker == outcome.Failed(outcome.JobError(
        "JobTimeout", "The job ran longer than its timeout of 0.5 s and was stopped.", False))


def test_a_stopped_job_is_interrupted_whatever_the_reason():
    assert decide(outcome.Stopped("cancelled by a client")) == outcome.Interrupted()
    assert decide(outcome.Stopped("worker shutdown")) == outcome.Interrupted()


def test_an_error_raised_while_stopping_is_kept_with_the_interruption():
    decision = decide(outcome.Stopped("worker shutdown", RuntimeError("half done")))
    assert isinstance(decision, outcome.Interrupted)
    assert decision.error.type == "RuntimeError"


def test_a_job_that_cancels_itself_is_cancelled():
    assert decide(raised(asyncio.CancelledError())) == outcome.Cancelled()


def test_a_lost_attempt_is_a_retryable_failure_like_any_other():
    decision = decide(outcome.Lost(), attempt=1)
    assert decision == outcome.RetryAt(NOW + timedelta(seconds=2), outcome.WORKER_LOST)
    assert decide(outcome.Lost(), attempt=3) == outcome.Failed(outcome.WORKER_LOST)


def test_jitter_only_shortens_the_wait():
    policy = RetryPolicy(base=timedelta(seconds=10), jitter=0.5)
    for seed in range(20):
        decision = outcome.decide(outcome.Lost(), attempt=1, max_attempts=3, policy=policy,
                                  now=NOW, rng=random.Random(seed))
        assert NOW + timedelta(seconds=5) <= decision.at <= NOW + timedelta(seconds=10)


def test_a_jobs_policy_is_its_types_with_its_own_backoff():
    policy = outcome.retry_policy("system.sleep", {"base_seconds": 5, "jitter": 0})
    assert policy.base == timedelta(seconds=5)
    assert policy.max_attempts == 3
    assert outcome.retry_policy("system.sleep", None).base == timedelta(milliseconds=200)


def test_a_type_this_process_does_not_know_gets_the_default_policy():
    assert outcome.retry_policy("somebody.else", None) == RetryPolicy()


def test_the_decisions_speak_the_attempt_outcome_vocabulary():
    kinds = {kind.kind for kind in (outcome.Succeeded, outcome.RetryAt, outcome.Failed,
                                    outcome.Cancelled, outcome.Interrupted)}
    # `lost` is recorded by the database itself, for attempts whose worker died.
    assert kinds == set(Outcome) - {Outcome.LOST}


def test_an_ending_carries_the_one_error_shape_as_json():
    decision = decide(raised(errors.TransientJobError("try later")))
    ending = attempts.Ending.of(42, decision)
    assert (ending.attempt_id, ending.outcome, ending.result) == (42, "retry", None)
    assert ending.retry_at == decision.at
    error = json.loads(ending.error)
    assert set(error) == {"type", "message", "retryable", "traceback"}
    assert error["type"] == "TransientJobError"


def test_a_result_that_is_not_json_cannot_become_an_ending():
    with pytest.raises(TypeError):
        attempts.Ending.of(1, outcome.Succeeded({"when": object()}))
