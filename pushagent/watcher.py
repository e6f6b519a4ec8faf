"""Filesystem events from the drop folder, turned into ``(event, path)`` items on a queue.

The watchdog handler only enqueues: every decision is the agent loop's, because an exception in
a handler kills the observer thread. The watcher restarts its observer when it dies or when the
drop folder is removed and created again (an inotify watch does not survive that).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "moved" | "created" | "opened" | "written" | "scan" | "scan-dir"
    path: Path


# The events ``_Enqueue`` turns into items; watchdog drops the rest before they are queued (and
# leaves deletes and reads-without-write out of its inotify mask): a file renamed in and then
# claimed out of the folder otherwise made four events for one item (two of them the folder's
# own "modified", one a delete held half a second for a rename to pair it with).
_WANTED: list[type[FileSystemEvent]] = [
    DirCreatedEvent, DirMovedEvent, FileMovedEvent, FileCreatedEvent, FileOpenedEvent,
    FileModifiedEvent, FileClosedEvent,
]


class _Enqueue(FileSystemEventHandler):
    def __init__(self, put: Callable[[WatchEvent], None], *, polling: bool) -> None:
        self._put = put
        # A polling observer sees neither opens nor renames: every change is just "seen".
        self._polling = polling

    def on_any_event(self, event: FileSystemEvent) -> None:
        item = self._translate(event)
        if item is not None:
            self._put(item)

    def _translate(self, event: FileSystemEvent) -> WatchEvent | None:
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            target = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
            return WatchEvent("scan-dir", Path(os.fsdecode(target)))
        if isinstance(event, FileMovedEvent):
            kind = "scan" if self._polling else "moved"
            return WatchEvent(kind, Path(os.fsdecode(event.dest_path)))
        if isinstance(event, FileCreatedEvent):
            kind = "scan" if self._polling else "created"
            return WatchEvent(kind, Path(os.fsdecode(event.src_path)))
        if isinstance(event, FileOpenedEvent):
            # Readers open files too (the agent itself, to ask who writes): an open alone only
            # tells a writer's create from a rename; it never means new bytes.
            return WatchEvent("opened", Path(os.fsdecode(event.src_path)))
        if isinstance(event, (FileModifiedEvent, FileClosedEvent)):  # not closed-no-write
            return WatchEvent("written", Path(os.fsdecode(event.src_path)))
        return None


class DropWatcher:
    def __init__(self, root: Path, put: Callable[[WatchEvent], None], *, polling: bool) -> None:
        self.root = root
        self._put = put
        self._polling = polling
        self._observer: BaseObserver | None = None
        self._watched_inode: int | None = None

    def start(self) -> None:
        try:
            inode = os.stat(self.root).st_ino
        except FileNotFoundError:
            logger.error(
                "drop folder {} is missing; files dropped now are picked up once it is back",
                self.root,
            )
            return
        observer: BaseObserver = PollingObserver(timeout=1.0) if self._polling else Observer()
        observer.schedule(
            _Enqueue(self._put, polling=self._polling), str(self.root), recursive=True,
            event_filter=_WANTED,
        )
        observer.daemon = True
        observer.start()
        self._observer, self._watched_inode = observer, inode

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def running(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def ensure_running(self) -> bool:
        """Restart after a dead observer or a replaced drop folder; True when it restarted."""
        try:
            inode: int | None = os.stat(self.root).st_ino
        except FileNotFoundError:
            inode = None
        if self.running() and inode == self._watched_inode:
            return False
        if inode is None:
            if self._observer is not None:
                logger.error("drop folder {} disappeared; waiting for it to come back", self.root)
                self.stop()
            return False
        self.stop()
        logger.warning("watching drop folder {} again (observer restarted)", self.root)
        self.start()
        return True


def scan_drop_folder(root: Path, *, ignored: Callable[[str], bool]) -> Iterator[Path]:
    """Every entry the agent must look at: files at the top and one level down (segment
    folders); a directory named like a CSV and any link or device come out too, to be moved aside.
    Symlinked folders are never entered. ``ignored`` is asked with the path under ``root``."""
    # Entries are read as they are used, never listed: 20,000 of them listed took 5 MiB.
    try:
        top = os.scandir(root)
    except FileNotFoundError:
        return
    with top:
        for entry in top:
            if ignored(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False) and not looks_like_csv(entry.name):
                yield from _scan_segment_folder(Path(entry.path), ignored=ignored)
            else:
                yield Path(entry.path)


def _scan_segment_folder(folder: Path, *, ignored: Callable[[str], bool]) -> Iterator[Path]:
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    with entries:
        for entry in entries:
            if ignored(f"{folder.name}/{entry.name}"):
                continue
            if entry.is_dir(follow_symlinks=False) and not looks_like_csv(entry.name):
                continue  # deeper folders are not part of the drop-folder convention
            yield Path(entry.path)


def looks_like_csv(name: str) -> bool:
    return name.lower().endswith(".csv")
