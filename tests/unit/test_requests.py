"""The one request type: decoded strictly, planned against its job type's declaration."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from service import errors
from service.domain import jobtypes, requests


def test_plan_fills_in_the_type_defaults():
    planned = requests.plan(requests.JobRequest(type=jobtypes.SYSTEM_SLEEP.name))
    r = planned.request
    assert r.queue == jobtypes.SYSTEM_SLEEP.queue
    assert r.max_attempts == jobtypes.SYSTEM_SLEEP.retry.max_attempts
    assert r.timeout_seconds == jobtypes.SYSTEM_SLEEP.timeout.total_seconds()
    assert r.payload == {"seconds": 1.0, "fail_times": 0, "permanent": False,
                         "ignore_cancel": False}


def test_plan_names_every_wrong_field_with_its_prefix():
    request = requests.JobRequest(
        type=jobtypes.SYSTEM_NOOP.name, priority=5000, max_attempts=0, queue="a b",
        backoff=requests.Backoff(jitter=3), lock="")
    with pytest.raises(errors.InvalidRequest) as caught:
        requests.plan(request, prefix="jobs[2].")
    assert {f.field for f in caught.value.fields} == {
        "jobs[2].priority", "jobs[2].max_attempts", "jobs[2].queue", "jobs[2].backoff.jitter",
        "jobs[2].lock"}


def test_upload_types_are_refused_without_their_files():
    with pytest.raises(errors.InvalidRequest, match="/api/v1/conversions"):
        requests.plan(requests.JobRequest(type=jobtypes.MESH_CONVERT.name,
                                          payload={"format": "glb"}))


def test_the_same_request_has_the_same_fingerprint_and_another_does_not():
    one = requests.JobRequest(type=jobtypes.SYSTEM_NOOP.name, priority=1)
    assert requests.plan(one).fingerprint == requests.plan(one).fingerprint
    other = msgspec.structs.replace(one, priority=2)
    assert requests.plan(one).fingerprint != requests.plan(other).fingerprint
    locked = msgspec.structs.replace(one, lock="l")
    assert requests.plan(one).fingerprint != requests.plan(locked).fingerprint


def test_the_fingerprint_of_a_request_without_locks_is_the_one_stored_before():
    # Idempotency keys stored by earlier releases must still match their replays: the value
    # was computed by the code before the request type was unified.
    request = requests.JobRequest(type=jobtypes.SYSTEM_NOOP.name, priority=3,
                                  run_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert requests.plan(request).fingerprint == (
        "df9575f549abea058eed08bc0fa81e026d1ac1bd51ffdac114bdb94f5c5b6a7a")


@pytest.mark.parametrize("body", [
    b'{"type": "system.noop", "priority": "1"}',
    b'{"type": "system.noop", "run_at": 123}',
    b'{"type": "system.noop", "unknown": 1}',
])
def test_decoding_is_strict(body):
    with pytest.raises(msgspec.ValidationError):
        requests.decode(body)
