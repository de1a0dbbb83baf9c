"""jobq.testing.run_inline: a user's job code, run now with a real context that writes nowhere."""

from __future__ import annotations

import pytest

import jobq
from jobq.testing import run_inline
from tests.userapp import jobs as userapp


async def test_an_async_job_runs_inline_with_its_progress():
    run = await run_inline(userapp.add, {"a": 2, "b": 3})
    assert run.result == {"sum": 5, "attempt": 1}
    assert run.progress == [(50, "adding", "2 + 3")]


async def test_a_payload_that_does_not_fit_is_refused_as_the_api_would():
    with pytest.raises(jobq.InvalidRequest) as caught:
        await run_inline("userapp.add", {"a": "x"})
    assert [f.field for f in caught.value.fields] == ["payload.a"]


async def test_a_sync_job_runs_and_raises_what_it_raises_on_the_attempt_given():
    with pytest.raises(userapp.Unfixable):
        await run_inline(userapp.flaky, {"fail_times": 1, "error": "Unfixable"})
    assert (await run_inline(userapp.flaky, {"fail_times": 1}, attempt=2)).result == {
        "attempt": 2}


async def test_the_timeout_is_enforced_and_the_code_is_told_to_stop():
    with pytest.raises(jobq.JobTimeout):
        await run_inline(userapp.nap, {"seconds": 30}, timeout=0.3)


async def test_a_process_job_runs_inline_from_its_implementation():
    run = await run_inline(userapp.spin, {"seconds": 0.2})
    assert run.result["turns"] > 0
