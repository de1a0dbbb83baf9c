"""Event cursors, webhook signatures and the address policy, metrics buckets, new settings."""

from __future__ import annotations

import pytest

from service import errors, events, metrics, webhooks
from service.domain import jobtypes
from service.settings import SettingsError, load_settings

# printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
OPENSSL_SIGNATURE = "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"


def test_cursor_text_round_trips():
    cursor = events.Cursor(1234, 1795978363097954)
    assert str(cursor) == "1234-1795978363097954"
    assert events.Cursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize("raw", ["", "12", "a-b", "12-", "-12", "1-2-3", "9" * 30 + "-" + "9" * 30])
def test_a_cursor_this_api_never_sent_is_a_4xx(raw):
    with pytest.raises(errors.InvalidRequest) as caught:
        events.Cursor.parse(raw)
    assert caught.value.fields[0].field == "Last-Event-ID"


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_as_openssl_computes_it():
    assert webhooks.sign("whsec_test", 1700000000, b'{"a":1}') == "v1=" + OPENSSL_SIGNATURE


def test_one_signature_per_secret_and_a_receiver_with_either_accepts():
    header = webhooks.signature_header(["new", "old"], 1700000000, b"{}")
    assert header.count("v1=") == 2
    for theirs in (["new"], ["old"], ["other", "old"]):
        assert webhooks.verify(theirs, "1700000000", header, b"{}", now=1700000010)
    assert not webhooks.verify(["other"], "1700000000", header, b"{}", now=1700000010)


def test_a_changed_body_or_an_old_timestamp_fails_verification():
    header = webhooks.signature_header(["s"], 1700000000, b"{}")
    assert not webhooks.verify(["s"], "1700000000", header, b"{ }", now=1700000000)
    assert not webhooks.verify(["s"], "1700000000", header, b"{}", now=1700000000 + 301)
    assert not webhooks.verify(["s"], "not-a-time", header, b"{}", now=1700000000)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "224.0.0.1",
])
def test_internal_addresses_are_refused_by_default(address):
    with pytest.raises(webhooks.Refused, match="JOBQ_WEBHOOK_ALLOWED_NETWORKS"):
        webhooks.AddressPolicy().check(address)


def test_public_addresses_pass_and_allowed_networks_open_internal_ones():
    webhooks.AddressPolicy().check("8.8.8.8")
    webhooks.AddressPolicy().check("2001:4860:4860::8888")
    allowed = webhooks.AddressPolicy(["127.0.0.1/32", "10.0.0.0/8"])
    allowed.check("127.0.0.1")
    allowed.check("::ffff:10.9.9.9")
    with pytest.raises(webhooks.Refused):
        allowed.check("127.0.0.2")


def test_histogram_buckets_become_cumulative_counts_up_to_each_bound():
    # bucket 0: below 0.1; 1: 0.1 up to 1; 2: from 1 up
    assert metrics._cumulative([0.1, 1.0], [2, 3, 4]) == [("0.1", 2), ("1.0", 5), ("+Inf", 9)]


def test_webhook_settings_are_read_and_checked():
    settings = load_settings({"JOBQ_WEBHOOK_SECRETS": "new, old,",
                              "JOBQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1, 10.0.0.0/8",
                              "JOBQ_WEBHOOK_TIMEOUT_SECONDS": "2.5",
                              "JOBQ_STREAM_HEARTBEAT_SECONDS": "1"})
    assert settings.webhook_secrets == ("new", "old")
    assert settings.webhook_allowed_networks == ("127.0.0.1/32", "10.0.0.0/8")
    assert settings.webhook_timeout.total_seconds() == 2.5
    assert settings.stream_heartbeat.total_seconds() == 1
    assert settings.extra == {}
    with pytest.raises(SettingsError, match="JOBQ_WEBHOOK_ALLOWED_NETWORKS"):
        load_settings({"JOBQ_WEBHOOK_ALLOWED_NETWORKS": "intranet"})


class _NoJitter:
    def random(self) -> float:
        return 0.0


def test_the_webhook_job_type_is_internal_and_backs_off_exponentially():
    declared = jobtypes.get("system.webhook")
    assert declared.internal
    assert declared.retry.max_attempts == 10
    waits = [declared.retry.delay(n, _NoJitter()).total_seconds() for n in (1, 2, 3, 10)]
    assert waits == [5, 10, 20, 2560]
