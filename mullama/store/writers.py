"""The writer protocol: leases kept alive by heartbeats, claims on the clips being extracted.

Zarr has no locking, so writers of one store coordinate through small JSON files beside the data:

    writers/<run_id>/lease.json    who writes (host, pid), since when, and until when the lease holds;
                                   rewritten every HEARTBEAT_SECONDS, removed when the writer ends
    writers/<run_id>/claims.json   the clip ids this run is extracting

A lease whose `expires_at` has passed belongs to a dead writer (killed, crashed, or paused past its
lease). `store gc` removes only partitions that no live lease covers; a writer commits only while its
own lease holds; clips claimed by a live writer that started earlier are left to it. Times are the
writers' own clocks: keep them synchronised (NTP) across nodes, or raise MULLAMA_LEASE_SECONDS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterable

from mullama.errors import MullamaError
from mullama.store.location import Location

WRITERS = "writers"
# A writer that has not renewed its lease for this long is taken for dead. Renewals come every sixth of it,
# so five missed heartbeats in a row (a stalled object store, a paused VM) still leave a live lease.
DEFAULT_LEASE_SECONDS = 120.0


def lease_seconds() -> float:
    """The lease length: MULLAMA_LEASE_SECONDS (all writers and gc of one store should agree), else 120 s."""
    raw = os.environ.get("MULLAMA_LEASE_SECONDS", "")
    if not raw:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 1 or seconds == float("inf"):
        raise MullamaError(f"MULLAMA_LEASE_SECONDS {raw!r}: must be a number of seconds, at least 1")
    return seconds


def lease_key(run_id: str) -> str:
    return f"{WRITERS}/{run_id}/lease.json"


def claims_key(run_id: str) -> str:
    return f"{WRITERS}/{run_id}/claims.json"


def process_namespace() -> str:
    """Which kernel boot and PID namespace this process's pid belongs to: a writer in the same namespace
    whose pid is gone is known dead at once, without waiting for its lease to run out."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: rely on expiry alone
        return ""


NAMESPACE = process_namespace()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


@dataclass(frozen=True)
class Lease:
    run_id: str
    writer: str  # host:pid
    started_at: float
    expires_at: float
    namespace: str = ""  # process_namespace() of the writer

    @property
    def pid(self) -> int:
        return int(self.writer.rsplit(":", 1)[1])

    def live(self, now: float | None = None) -> bool:
        """Not expired, and not a writer of this machine's PID namespace whose process is gone (kill -9)."""
        if self.expires_at <= (time.time() if now is None else now):
            return False
        return not (self.namespace and self.namespace == NAMESPACE and _pid_gone(self.pid))

    def precedes(self, other: "Lease") -> bool:
        """The earlier writer keeps the clips both claim; both sides compute the same order."""
        return (self.started_at, self.run_id) < (other.started_at, other.run_id)


def read_leases(location: Location) -> dict[str, Lease]:
    """Every lease on record, live or expired; unreadable ones (a half-visible PUT) are skipped this time."""
    keys = [lease_key(run_id) for run_id in location.list(WRITERS) if not run_id.startswith(".")]
    try:
        found = location.read_many(keys)
    except FileNotFoundError:  # a writer ended between the listing and the read
        found = {key: location.read_bytes(key) for key in keys if location.exists(key)}
    leases = {}
    for data in found.values():
        try:
            lease = Lease(**json.loads(data))
        except (ValueError, TypeError):
            continue
        leases[lease.run_id] = lease
    return leases


def live_leases(location: Location) -> dict[str, Lease]:
    now = time.time()
    return {run_id: lease for run_id, lease in read_leases(location).items() if lease.live(now)}


def read_claims(location: Location, run_id: str) -> set[str] | None:
    """The clips `run_id` claimed; None while it has not written its claims yet (or they are unreadable)."""
    try:
        return set(json.loads(location.read_bytes(claims_key(run_id))))
    except (FileNotFoundError, ValueError, TypeError):
        return None


class WriterLease:
    """This process's lease on a store: taken on enter, renewed by a thread, released on exit."""

    def __init__(self, location: Location, run_id: str, seconds: float | None = None):
        self.location, self.run_id = location, run_id
        self.seconds = lease_seconds() if seconds is None else seconds
        self.lease = Lease(run_id, f"{socket.gethostname()}:{os.getpid()}", time.time(), 0.0, NAMESPACE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed = 0.0
        self._lost = False  # a renewal came too late once: gc may have run, never renew again

    def __enter__(self) -> "WriterLease":
        try:
            self._renew()
        except PermissionError:
            raise MullamaError(f"cannot write to store {self.location.url}: permission denied; check the folder's "
                               "permissions or choose another --store") from None
        except OSError as exc:
            raise MullamaError(f"cannot write to store {self.location.url}: {exc}") from None
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.location.remove(f"{WRITERS}/{self.run_id}")

    def _renew(self) -> None:
        now = time.time()
        self.lease = dataclasses.replace(self.lease, expires_at=now + self.seconds)
        self.location.write_atomic(lease_key(self.run_id), json.dumps(asdict(self.lease)).encode())
        self._renewed = now

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 6):
            if time.time() >= self._renewed + self.seconds:
                self._lost = True  # paused or cut off past the lease: others may have taken it for dead
                return
            try:
                self._renew()
            except OSError:  # the store is unreachable for now: the next beat tries again
                continue

    def claim(self, clip_ids: Iterable[str]) -> None:
        self.location.write_atomic(claims_key(self.run_id), json.dumps(sorted(clip_ids)).encode())

    def check(self) -> None:
        """Refuse to commit once this lease may have expired: gc could have collected the partition."""
        if self._lost or time.time() >= self._renewed + self.seconds:
            raise MullamaError(f"the lease of writer {self.run_id} on {self.location.url} expired (the process was "
                               "paused or the store unreachable for too long); its uncommitted work may have been "
                               "collected; run the same command again to continue")



class ClaimBook:
    """Claims of other writers as this writer sees them; claims are written once per run, so each is read once."""

    def __init__(self, location: Location, own: Lease):
        self.location, self.own = location, own
        self._claims: dict[str, set[str]] = {}

    def taken_by_earlier_writers(self) -> set[str]:
        """Clips claimed by live writers that started before this one: theirs to extract."""
        taken: set[str] = set()
        for run_id, lease in live_leases(self.location).items():
            if run_id != self.own.run_id and lease.precedes(self.own):
                if run_id not in self._claims:
                    claims = read_claims(self.location, run_id)
                    if claims is None:  # leased but not claimed yet: look again next time
                        continue
                    self._claims[run_id] = claims
                taken |= self._claims[run_id]
        return taken


def check_live(location: Location, run_id: str) -> None:
    """For writers that do not hold the lease themselves (Ray actors): the driver's lease must still hold."""
    leases = read_leases(location)
    if run_id not in leases or not leases[run_id].live():
        raise MullamaError(f"the lease of run {run_id} on {location.url} has expired; not committing")
