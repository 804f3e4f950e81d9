"""Queue shards: one queue directory per process, so granian's workers never share a file.

Each worker process claims the first shard directory under `<storage.dir>/queue/` whose lock it
can take (the data plane holds an exclusive flock while the queue is open). A shard left behind by
a process that is gone (a crash, or fewer workers after a restart) is unlocked: a running worker
adopts it and delivers what it holds; the empty shard is then free for the next process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from trackgate._core import Core, QueueLocked

if TYPE_CHECKING:
    from trackgate.pipeline import Pipeline

log = logging.getLogger("trackgate.queue")

MAX_SHARDS = 256


def shard_root(storage_dir: str | Path, name: str = "queue") -> Path:
    return Path(storage_dir) / name


def claim(root: Path, open_core: Callable[[Path], Core]) -> tuple[Path, Core]:
    """Opens the first shard whose lock is free (creating shard directories as needed)."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_SHARDS):
        path = root / str(index)
        try:
            return path, open_core(path)
        except QueueLocked:
            continue
    raise RuntimeError(f"all {MAX_SHARDS} queue shards under {root} are locked by other processes")


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

    def run(self) -> None:
        if self.stop.wait(self.first_delay_s):
            return
        while True:
            self.scan()
            if self.stop.wait(self.interval_s):
                return

    def scan(self) -> None:
        from trackgate.pipeline import Pipeline

        root = self.owner.shard_root
        for path, drain in list(self.draining.items()):
            if drain.pending() == 0:
                # The empty shard stays (and is unlocked) for the next process that needs one:
                # removing it could race with a process claiming it.
                drain.close(0)
                del self.draining[path]
                log.info("adopted shard drained", extra={"shard": str(path)})
        mine = {self.owner.queue_dir} if self.owner.queue_dir else set()
        for path in candidates(root, mine | set(self.draining)):
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
            pending = drain.pending()
            if pending == 0:
                drain.close(0)
                continue
            log.info("adopting orphaned shard", extra={"shard": str(path), "records": pending})
            self.draining[path] = drain.start()

    def close(self, grace_s: float) -> None:
        self.stop.set()
        for drain in self.draining.values():
            drain.close(grace_s)
        self.draining.clear()
