"""A worker host of its own: a network namespace joined to this machine by a veth pair, with a
private /30 between the two ends. Cutting the link is a network partition of that host.

Traffic never leaves the machine: a blackhole route for the /30 (behind the link's own route)
keeps the host's packets for the namespace off the default route while the link is down.

The namespace knows the host's link-layer address for good (a permanent neighbour entry), so
while the link is cut nothing there fails fast ("no route to host" once ARP gives up): packets
just vanish, as across a routed network that broke. The connections it holds go half-open,
the hardest case for a client.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass


class Unavailable(Exception):
    """Network namespaces cannot be made here; the message says why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class WorkerHost:
    """The namespace `name`; the host side of the link is `host_link` at `host_address`, the
    namespace side `peer_address`."""

    name: str
    host_link: str
    host_address: str
    peer_address: str
    subnet: str

    def cut(self) -> None:
        """Partition: the host's end goes down. The namespace's end stays up and sees only
        silence (packets vanish into a link with no carrier), as across a broken network."""
        _ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_link, "up")

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside the namespace (same pid: `ip netns exec` execs it)."""
        return ["ip", "netns", "exec", self.name, *argv]


def _check_possible() -> None:
    if not sys.platform.startswith("linux"):
        raise Unavailable("network namespaces are Linux only")
    if os.geteuid() != 0:
        raise Unavailable("making a network namespace needs root")
    if shutil.which("ip") is None:
        raise Unavailable("the `ip` command (iproute2) is not installed")


@contextlib.contextmanager
def worker_host() -> Iterator[WorkerHost]:
    """A namespace and its link, removed again whatever happens; Unavailable if they cannot be
    made (not root, no iproute2, a container without CAP_NET_ADMIN...)."""
    _check_possible()
    tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    octet = random.randrange(256)
    host = WorkerHost(name=f"jobq-part-{tag}", host_link=f"jqh{tag}",
                      host_address=f"10.231.{octet}.1", peer_address=f"10.231.{octet}.2",
                      subnet=f"10.231.{octet}.0/30")
    peer_link = f"jqn{tag}"
    made = _ip("netns", "add", host.name, check=False)
    if made.returncode != 0:
        raise Unavailable(f"`ip netns add` failed: {made.stderr.strip()}")
    try:
        linked = _ip("link", "add", host.host_link, "type", "veth", "peer", "name", peer_link,
                     check=False)
        if linked.returncode != 0:
            raise Unavailable(f"`ip link add ... type veth` failed: {linked.stderr.strip()}")
        _ip("route", "add", "blackhole", host.subnet, "metric", "4000")
        _ip("link", "set", peer_link, "netns", host.name)
        _ip("addr", "add", f"{host.host_address}/30", "dev", host.host_link)
        _ip("link", "set", host.host_link, "up")
        _ip("netns", "exec", host.name, "ip", "addr", "add", f"{host.peer_address}/30", "dev",
            peer_link)
        _ip("netns", "exec", host.name, "ip", "link", "set", peer_link, "up")
        _ip("netns", "exec", host.name, "ip", "link", "set", "lo", "up")
        mac = json.loads(_ip("-j", "link", "show", host.host_link).stdout)[0]["address"]
        _ip("netns", "exec", host.name, "ip", "neigh", "replace", host.host_address, "lladdr",
            mac, "dev", peer_link, "nud", "permanent")
        yield host
    finally:
        # Deleting the namespace deletes its end of the pair, and with it the host's end.
        _ip("netns", "del", host.name, check=False)
        _ip("link", "del", host.host_link, check=False)
        _ip("route", "del", "blackhole", host.subnet, "metric", "4000", check=False)
