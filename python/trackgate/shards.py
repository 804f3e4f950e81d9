"""Queue shards: one queue directory per process, so granian's workers never share a file.

Each worker process claims the first shard directory under `<storage.dir>/queue/` whose lock it
can take (the data plane holds an exclusive flock while the queue is open). A shard left behind by
a process that is gone (a crash, or fewer workers after a restart) is unlocked: a running worker
adopts it and delivers what it holds; the empty shard is then free for the next process.

A shard that exists but cannot be opened (a damaged file, a failing disk) is skipped, logged once
and tried again at every scan: it must not keep a worker from starting or hold back the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from trackgate import durable
from trackgate._core import Core, QueueLocked

if TYPE_CHECKING:
    from trackgate.pipeline import Pipeline

log = logging.getLogger("trackgate.queue")

MAX_SHARDS = 256


def shard_root(storage_dir: str | Path, name: str = "queue") -> Path:
    return Path(storage_dir) / name


class _Unopenable:
    """The shards that failed to open, so that each is logged once per process, not at every scan."""

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self._lock = threading.Lock()

    def failed(self, path: Path, exc: Exception, action: str) -> None:
        with self._lock:
            if path in self._paths:
                return
            self._paths.add(path)
        log.warning(
            f"queue shard cannot be opened; {action}",
            extra={"shard": str(path), "error": f"{type(exc).__name__}: {exc}"},
        )

    def opened(self, path: Path) -> None:
        with self._lock:
            if path not in self._paths:
                return
            self._paths.discard(path)
        log.info("queue shard opened again", extra={"shard": str(path)})


UNOPENABLE = _Unopenable()


def claim(root: Path, open_core: Callable[[Path], Core], durable_dirs: bool = True) -> tuple[Path, Core]:
    """Opens the first shard whose lock is free (creating shard directories as needed; with
    `durable_dirs`, fsynced with their parents). An existing shard that cannot be opened is
    skipped; a new one that cannot be is a storage failure, raised."""
    durable.make_dirs(root, durable_dirs)
    for index in range(MAX_SHARDS):
        path = root / str(index)
        existed = path.exists()
        try:
            core = open_core(path)
        except QueueLocked:
            continue
        except Exception as exc:
            if not existed:
                raise
            UNOPENABLE.failed(path, exc, "skipped (adopted once it opens)")
            continue
        UNOPENABLE.opened(path)
        return path, core
    raise RuntimeError(f"all {MAX_SHARDS} queue shards under {root} are locked by other processes or unusable")


def candidates(root: Path, exclude: set[Path]) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and p not in exclude]
    return sorted(found, key=lambda p: int(p.name))


class Adopter(threading.Thread):
    """Looks for orphaned shards now and then, and drains each one it can lock."""

    def __init__(self, owner: Pipeline) -> None:
        super().__init__(name="trackgate-shard-adopter", daemon=True)
        self.owner = owner
        self.interval_s = owner.config.storage.orphan_scan_s
        # Give sibling workers time to claim their own shards before looking at unlocked ones.
        self.first_delay_s = min(5.0, self.interval_s)
        self.stop = threading.Event()
        self.draining: dict[Path, Pipeline] = {}
        # Guards `draining` between a scan and `stop_adopting`, so that no drain is added once
        # adoption stopped (close does not wait for a scan that is opening a large shard).
        self.lock = threading.Lock()

    def run(self) -> None:
        if self.stop.wait(self.first_delay_s):
            return
        while True:
            try:
                self.scan()
            except Exception:  # the next scan tries again; the thread must outlive a bad moment
                log.exception("scanning for orphaned shards failed")
            if self.stop.wait(self.interval_s):
                return

    def scan(self) -> None:
        from trackgate.pipeline import Pipeline

        root = self.owner.shard_root
        with self.lock:
            draining = list(self.draining.items())
        for path, drain in draining:
            if drain.pending() == 0:
                with self.lock:
                    if self.draining.pop(path, None) is None:
                        continue  # adoption stopped meanwhile: the shutdown closes it
                # The empty shard stays (and is unlocked) for the next process that needs one:
                # removing it could race with a process claiming it.
                drain.close(0)
                log.info("adopted shard drained", extra={"shard": str(path)})
        mine = {self.owner.queue_dir} if self.owner.queue_dir else set()
        with self.lock:
            adopted = set(self.draining)
        for path in candidates(root, mine | adopted):
            if self.stop.is_set():
                return  # shutting down: adopt nothing more
            try:
                drain = Pipeline(
                    self.owner.config,
                    self.owner.exporters,
                    queue_dir=path,
                    queue_name=self.owner.queue_name,
                    secondary=True,
                )
            except QueueLocked:
                continue  # another live process owns it
            except Exception as exc:  # one damaged shard must not hold back the others
                UNOPENABLE.failed(path, exc, "will retry")
                continue
            UNOPENABLE.opened(path)
            pending = drain.pending()
            if pending == 0:
                drain.close(0)
                continue
            with self.lock:
                adopt = not self.stop.is_set()
                if adopt:  # started under the lock: a drain shutdown takes is one that runs
                    self.draining[path] = drain.start()
            if not adopt:
                drain.close(0)  # adoption stopped while it opened: the next process takes it
                return
            log.info("adopting orphaned shard", extra={"shard": str(path), "records": pending})

    def stop_adopting(self) -> list[Pipeline]:
        """Stops scanning; returns the drains under way, which the caller closes (no scan adds
        one after this)."""
        self.stop.set()
        with self.lock:
            drains = list(self.draining.values())
            self.draining.clear()
        return drains

    def close(self, grace_s: float) -> None:
        from trackgate.pipeline import close_together

        close_together(self.stop_adopting(), time.monotonic() + grace_s)
