"""Webhooks: the signature, the address check that keeps deliveries off internal networks, and
one delivery over HTTP.

A delivery is a POST of JSON with these headers:
- `X-Jobq-Delivery`: the delivery's id, the same on every attempt (receivers dedupe on it);
- `X-Jobq-Event`: `job.succeeded`, `job.failed` or `job.cancelled`;
- `X-Jobq-Timestamp`: Unix seconds when this attempt was signed;
- `X-Jobq-Signature`: `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`, one per configured secret,
  comma-separated (newest first), so that a receiver holding any one of them can verify while a
  secret is being rotated.

The address check: a target must resolve only to public addresses, unless its addresses are in
JOBQ_WEBHOOK_ALLOWED_NETWORKS. It is made on the addresses the connection is opened to (the
resolver hook of aiohttp, so a second lookup cannot answer differently) and again at every
redirect. Connect and read timeouts apply, and at most MAX_RESPONSE_BYTES of an answer are read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

DELIVERY_HEADER = "X-Jobq-Delivery"
EVENT_HEADER = "X-Jobq-Event"
TIMESTAMP_HEADER = "X-Jobq-Timestamp"
SIGNATURE_HEADER = "X-Jobq-Signature"

MAX_REDIRECTS = 3
MAX_RESPONSE_BYTES = 4096
"""Most bytes of a receiver's answer that are read (an excerpt goes into the history)."""
REDIRECTS = frozenset({301, 302, 303, 307, 308})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signature_header(secrets: Iterable[str], timestamp: int, body: bytes) -> str:
    return ", ".join(sign(secret, timestamp, body) for secret in secrets)


def verify(secrets: Iterable[str], timestamp: str, signatures: str, body: bytes,
           tolerance: float = 300, now: float | None = None) -> bool:
    """What a receiver does: accept if the timestamp is recent and any signature matches any
    of its secrets (compared in constant time)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    offered = [s.strip() for s in signatures.split(",")]
    return any(hmac.compare_digest(sign(secret, sent, body), candidate)
               for secret in secrets for candidate in offered)


class Refused(Exception):
    """The target may not be called (its address, its scheme): never tried again."""


class AddressPolicy:
    """Which addresses webhooks may go to: public ones, and those in the allowed networks."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed = [ipaddress.ip_network(n) for n in allowed_networks]

    def check(self, address: str) -> None:
        """Refused unless `address` is public or explicitly allowed."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if any(ip in network for network in self.allowed):
            return
        if ip.is_global and not ip.is_multicast:
            return
        raise Refused(
            f"{ip} is a {_kind(ip)} address; webhooks go to public addresses only unless "
            "JOBQ_WEBHOOK_ALLOWED_NETWORKS includes it")


def _kind(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata lives here)"
    if ip.is_private:
        return "private"
    if ip.is_multicast:
        return "multicast"
    return "non-public"


class _CheckingResolver(AbstractResolver):
    """Resolves as usual, then keeps only the addresses the policy allows: the connection can
    only be opened to an address that was checked."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.refusal: str | None = None
        self._resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        allowed = []
        for result in results:
            try:
                self.policy.check(result["host"])
                allowed.append(result)
            except Refused as exc:
                self.refusal = f"{host} resolves to {exc}"
        if not allowed:
            raise OSError(self.refusal or f"{host} has no address")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


@dataclass(frozen=True)
class Delivery:
    """How one attempt went."""

    url: str
    """The last URL posted to (after redirects)."""
    outcome: str
    """delivered (2xx), failed (tried again later) or refused (never tried again)."""
    status_code: int | None
    duration_ms: float
    error: str | None


async def deliver(url: str, body: bytes, headers: dict[str, str], policy: AddressPolicy,
                  timeout: float) -> Delivery:
    """POST `body` to `url`, following up to MAX_REDIRECTS redirects (each target checked)."""
    started = time.monotonic()

    def done(outcome: str, status: int | None = None, error: str | None = None) -> Delivery:
        return Delivery(url, outcome, status, round((time.monotonic() - started) * 1000, 1),
                        error)

    resolver = _CheckingResolver(policy)
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True)
    limits = aiohttp.ClientTimeout(total=3 * timeout, sock_connect=timeout, sock_read=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=limits,
                                     trust_env=False) as session:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = _check_url(url, policy)
                async with session.post(target, data=body, headers=headers,
                                        allow_redirects=False) as response:
                    answer = await response.content.read(MAX_RESPONSE_BYTES)
                    location = response.headers.get("Location")
                    if response.status in REDIRECTS and location:
                        url = str(response.url.join(URL(location)))
                        continue
                    if 200 <= response.status < 300:
                        return done("delivered", response.status)
                    excerpt = answer[:200].decode(errors="replace")
                    return done("failed", response.status,
                                f"the receiver answered {response.status}: {excerpt}".strip())
            except Refused as exc:
                return done("refused", error=str(exc))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if resolver.refusal is not None:
                    return done("refused", error=resolver.refusal)
                return done("failed", error=_describe(exc, timeout))
    return done("failed", error=f"more than {MAX_REDIRECTS} redirects")


def _check_url(url: str, policy: AddressPolicy) -> URL:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Refused(f"{url!r} is not an http(s) URL")
    try:
        ipaddress.ip_address(parsed.host.split("%", 1)[0])
    except ValueError:
        return parsed  # a name: the resolver checks its addresses
    policy.check(parsed.host)  # an address literal never reaches the resolver
    return parsed


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def record(conn: asyncpg.Connection, attempt_id: int, job_id: Any,
                 delivery: Delivery) -> bool:
    """Write one attempt into the history of the job it is about; False if the delivery job's
    lease is gone (nothing is written then)."""
    return bool(await conn.fetchval(
        "SELECT jobq_record_webhook_delivery($1, $2, $3, $4, $5, $6, $7)",
        attempt_id, job_id, delivery.url, delivery.status_code, delivery.duration_ms,
        delivery.outcome, delivery.error))


_DELIVERIES = """
SELECT id, delivery_id, attempt, at, url, status_code, duration_ms, outcome, error
FROM webhook_deliveries WHERE job_id = $1 ORDER BY id
"""


async def deliveries(conn: asyncpg.Connection, job_id: Any) -> list[dict[str, Any]]:
    """Every delivery attempt of a job's webhooks, oldest first."""
    return [dict(r) for r in await conn.fetch(_DELIVERIES, job_id)]
