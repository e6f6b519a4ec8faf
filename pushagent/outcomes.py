"""Moving files between the drop folder, the claim area, done/ and failed/, never overwriting.

A move is a rename where possible (atomic), else copy + fsync + rename + unlink, so a file is
at every instant complete under at least one name. Links are moved as links, never followed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePath


def unique_target(folder: Path, relative: PurePath) -> Path:
    """``folder/relative``, or ``name-2.csv``, ``name-3.csv``... when that name is taken."""
    target = folder / relative
    n = 1
    while os.path.lexists(target) or os.path.lexists(error_report_path(target)):
        n += 1
        target = folder / relative.parent / f"{relative.stem}-{n}{relative.suffix}"
    return target


def same_entry(a: Path, b: Path) -> bool:
    """Two names of one file (hard links), without following symlinks."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def error_report_path(target: Path) -> Path:
    return target.with_name(target.name + ".error.json")


def move_without_overwrite(src: Path, folder: Path, relative: PurePath) -> Path:
    """Move ``src`` to a free name under ``folder`` keeping ``relative``; returns where it went."""
    while True:
        target = unique_target(folder, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # link() refuses to replace an existing name, which rename() would silently do.
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            return _move_fallback(src, target)
        os.unlink(src)
        _fsync_dir(target.parent)
        return target


def _move_fallback(src: Path, target: Path) -> Path:
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "target appeared during the move", str(target))
    try:
        os.rename(src, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        partial = target.with_name(f".{target.name}.partial")
        # shutil.move keeps a symlink a symlink and copies a directory as a tree.
        shutil.move(str(src), str(partial))
        os.rename(partial, target)
    _fsync_dir(target.parent)
    return target


def write_error_report(target: Path, report: Mapping[str, object]) -> Path:
    path = error_report_path(target)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=2, ensure_ascii=False, default=str)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.rename(partial, path)
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
