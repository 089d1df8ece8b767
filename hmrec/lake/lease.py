"""One job that writes at a time per lakehouse: a lease file under its root.

Every hmrec command that writes to the lakehouse (all but ``generate`` and
``recommend``) holds the lease while it runs, and so does
:func:`hmrec.pipeline.run` when called from Python. The lease is the file
``<lakehouse>/_hmrec_lease.json``:

- taken by an exclusive create (``O_CREAT | O_EXCL``), so of two jobs
  starting at once exactly one gets it, on a local disk and on NFS (v3 and
  later create exclusively on the server);
- holding the holder's user, host, pid (and that process's start time, so a
  reused pid is not mistaken for the holder), command and start time;
- kept alive by a heartbeat thread that touches the file's modification time
  every ``lease.heartbeat_s`` seconds (at least three times per
  ``lease.stale_after_s``); the modification time is the heartbeat;
- taken over when stale: not touched for ``lease.stale_after_s`` seconds, or
  held by a pid that no longer runs on this host (a job killed with
  ``kill -9``). The stale file is first renamed aside, which only one
  contender can do, and checked to be the one judged stale; a message says
  whose lease was taken over and why;
- removed when the job ends, also when it fails.

A second job finds the lease held and exits at once with
:data:`BUSY_EXIT` and a line naming the holder, or with ``--wait`` polls
until the lease is free. Re-entrant within a process: a stage called by the
refresh runs under the refresh's lease.

On a lakehouse root that is not a file system path (``s3a://``, ``hdfs://``)
there is no lease (a warning says so): Delta's optimistic concurrency still
keeps every table whole, and a conflicting commit fails with a message from
:func:`concurrent_commit_message`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import getpass
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import psutil

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.progress import log

LEASE_FILE = "_hmrec_lease.json"
BUSY_EXIT = 3  # exit status of a command that found the lakehouse busy
READ_ONLY_COMMANDS = frozenset({"generate", "recommend", "compare", "export"})
# Delta's commit conflicts (delta.exceptions), matched by name so the command line need not import pyspark
CONFLICT_CLASSES = frozenset({
    "DeltaConcurrentModificationException", "ConcurrentWriteException", "MetadataChangedException",
    "ProtocolChangedException", "ConcurrentAppendException", "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
})
CONFLICT_ERROR_CLASSES = ("DELTA_CONCURRENT_", "DELTA_CONSTRAINT_ALREADY_EXISTS", "DELTA_METADATA_CHANGED",
                          "DELTA_PROTOCOL_CHANGED")

F = TypeVar("F", bound=Callable[..., Any])


class LakehouseBusy(HmrecError):
    """Another job holds the lakehouse's lease."""


@dataclass(frozen=True)
class Holder:
    """What a lease file says about the job holding it, and how old its heartbeat is."""

    owner: str
    host: str
    pid: int
    pid_started: float | None
    command: str
    started_at: str
    heartbeat_age_s: float
    inode: int
    mtime_ns: int

    def describe(self) -> str:
        """``hmrec run (user alice on host h, pid 42, since ..., last heartbeat 3 s ago)``."""
        return (
            f"`hmrec {self.command}` (user {self.owner} on host {self.host}, pid {self.pid}, "
            f"since {self.started_at}, last heartbeat {self.heartbeat_age_s:.0f} s ago)"
        )


def lease_path(cfg: Config) -> Path | None:
    """The lease file of the lakehouse, or None when its root is not a file system path."""
    root = cfg.lakehouse
    if root.startswith("file://"):
        root = root[len("file://"):]
    elif "://" in root:
        return None
    return Path(root) / LEASE_FILE


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def read_holder(path: Path) -> Holder | None:
    """The holder of the lease at ``path``, or None when there is no lease file."""
    try:
        st = os.stat(path)
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        info = {}  # being written by its creator this instant, or left empty by one that died
    if not isinstance(info, dict):
        info = {}
    return Holder(
        owner=str(info.get("owner", "?")),
        host=str(info.get("host", "?")),
        pid=int(info.get("pid", 0) or 0),
        pid_started=info.get("pid_started"),
        command=str(info.get("command", "?")),
        started_at=str(info.get("started_at", "?")),
        heartbeat_age_s=max(0.0, time.time() - st.st_mtime),
        inode=st.st_ino,
        mtime_ns=st.st_mtime_ns,
    )


def stale_reason(holder: Holder, cfg: Config) -> str | None:
    """Why the lease of ``holder`` may be taken over, or None while it is live."""
    if holder.heartbeat_age_s > cfg.lease.stale_after_s:
        return (f"its last heartbeat was {holder.heartbeat_age_s:.0f} s ago, over lease.stale_after_s = "
                f"{cfg.lease.stale_after_s:g}")
    if holder.pid > 0 and holder.host == socket.gethostname():
        if not psutil.pid_exists(holder.pid):
            return f"pid {holder.pid} no longer runs on this host"
        started = _process_started(holder.pid)
        if holder.pid_started is not None and started is not None and abs(started - float(holder.pid_started)) > 1.0:
            return f"pid {holder.pid} on this host is now another process"
    return None


def _take_over(path: Path, holder: Holder) -> bool:
    """Remove the stale lease ``holder`` judged from; False if it changed or went in the meantime."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)  # of several contenders, one renames it
    except FileNotFoundError:
        return False
    st = os.stat(aside)
    if st.st_ino != holder.inode or st.st_mtime_ns != holder.mtime_ns:
        # not the lease judged stale (a new holder, or a heartbeat in between): put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


class Lease:
    """The lease of one lakehouse held by this process; see the module notes."""

    def __init__(self, cfg: Config, path: Path, command: str) -> None:
        self.cfg = cfg
        self.path = path
        self.command = command
        self.fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _interval(self) -> float:
        return max(0.05, min(self.cfg.lease.heartbeat_s, self.cfg.lease.stale_after_s / 3))

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        me = os.getpid()
        info = {
            "owner": _user(),
            "host": socket.gethostname(),
            "pid": me,
            "pid_started": _process_started(me),
            "command": self.command,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "lakehouse": self.cfg.lakehouse,
        }
        os.write(fd, json.dumps(info, sort_keys=True).encode())
        os.fsync(fd)
        self.fd = fd
        return True

    def acquire(self, wait: bool = False) -> "Lease":
        """Take the lease (over a stale one); a live holder is :class:`LakehouseBusy`, or awaited with ``wait``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        told = False
        while not self._try_create():
            holder = read_holder(self.path)
            if holder is None:
                continue  # released in between: try again
            why = stale_reason(holder, self.cfg)
            if why is not None:
                if _take_over(self.path, holder):
                    log("lease", f"took over the stale lease of {holder.describe()}: {why}")
                continue
            if not wait:
                raise LakehouseBusy(
                    f"the lakehouse {self.cfg.lakehouse} is busy: {holder.describe()} holds its lease "
                    f"({self.path}); wait until it ends, or rerun with --wait to start when it does"
                )
            if not told:
                log("lease", f"waiting for {holder.describe()} to release the lease on {self.cfg.lakehouse}")
                told = True
            time.sleep(self._interval())
        self._thread = threading.Thread(target=self._beat, name="hmrec-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _owned(self) -> bool:
        if self.fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self._interval()):
            if not self._owned():
                holder = read_holder(self.path)
                log("lease", f"WARNING: this job's lease on {self.cfg.lakehouse} was taken over"
                             + (f" by {holder.describe()}" if holder else "")
                             + "; another job may now write the lakehouse while this one runs")
                return
            with contextlib.suppress(OSError):
                os.utime(self.fd)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still this job's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.fd is None:
            return
        try:
            if self._owned():
                os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = None


_HELD: dict[Path, list] = {}  # lease path -> [Lease, depth]
_HELD_LOCK = threading.Lock()
_WARNED: set[str] = set()


@contextlib.contextmanager
def hold(cfg: Config, command: str, wait: bool = False) -> Iterator[None]:
    """Hold the lakehouse's lease for the block (re-entrant within this process)."""
    path = lease_path(cfg)
    if path is None:
        if cfg.lakehouse not in _WARNED:
            _WARNED.add(cfg.lakehouse)
            log("lease", f"no lease on {cfg.lakehouse}: only file system roots have one; run one job at a time "
                         f"on it (Delta refuses conflicting commits)")
        yield
        return
    path = path.resolve()
    with _HELD_LOCK:
        held = _HELD.get(path)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _HELD_LOCK:
                held[1] -= 1
        return
    lease = Lease(cfg, path, command).acquire(wait)
    with _HELD_LOCK:
        _HELD[path] = [lease, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            _HELD.pop(path, None)
        lease.release()


def holding(command: str) -> Callable[[F], F]:
    """Decorate a function whose first argument is the Config: it runs under the lakehouse's lease."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(cfg: Config, *args: Any, **kwargs: Any) -> Any:
            with hold(cfg, command):
                return fn(cfg, *args, **kwargs)
        return run  # type: ignore[return-value]
    return wrap


def for_command(cfg: Config, command: str, wait: bool = False) -> contextlib.AbstractContextManager:
    """The lease a command line command runs under: none for the ones that only read."""
    if command in READ_ONLY_COMMANDS:
        return contextlib.nullcontext()
    return hold(cfg, command, wait)


def concurrent_commit_message(exc: BaseException) -> str | None:
    """One line for a Delta commit conflict (another writer committed first), or None for other errors."""
    names = {c.__name__ for c in type(exc).__mro__}
    text = str(exc)
    found = sorted(names & CONFLICT_CLASSES)
    marker = next((m for m in CONFLICT_ERROR_CLASSES if m in text), None)
    if not found and marker is None:
        return None
    kind = found[0] if found else marker.rstrip("_")
    return (
        f"another job committed to the same Delta table while this one was writing ({kind}); this job's commit "
        f"was refused, so the table holds the other job's version, whole. Let the other job finish (hmrec "
        f"commands on a file system lakehouse wait for each other with --wait), then rerun this command"
    )
