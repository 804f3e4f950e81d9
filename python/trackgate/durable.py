"""Making file-system changes survive a power cut, not only a killed process.

fsync of a file makes its data durable, not its name: a file created or renamed is only there
after a crash once the directory holding it has been fsynced too.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, making the entries created, renamed or removed in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file by name (any descriptor's fsync flushes the file's dirty pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike[str], durable: bool) -> None:
    """`mkdir -p`; when `durable`, every directory it creates is fsynced with the parent naming it."""
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    target.mkdir(parents=True, exist_ok=True)
    if durable:
        # Top down, so that each entry is recorded in a directory that is itself recorded.
        for created in reversed(missing):
            sync_dir(created)
            sync_dir(created.parent)
