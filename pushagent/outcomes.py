"""Moving files between the drop folder, the claim area, done/ and failed/, never overwriting.

A move is a rename where possible (atomic), else copy + fsync + rename + unlink, so a file is
at every instant complete under at least one name. Links are moved as links, never followed.

Every name made here fits the folder's name limit (NAME_MAX, in bytes): a name that does not
fit would fail its move or its report forever, so a long stem is shortened instead.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

DEFAULT_NAME_MAX = 255
REPORT_SUFFIX = ".error.json"
PARTIAL_SUFFIX = ".partial"
# The fallback report name: this many bytes of the stem, "-", 8 hex digits, ".error.json"; at
# most 120 bytes, within every common filesystem's limit (eCryptfs, the smallest, takes 143).
FALLBACK_STEM_BYTES = 100


@functools.lru_cache(maxsize=1024)
def name_limit(folder: str | os.PathLike[str]) -> int:
    """The longest file name, in bytes, ``folder`` takes; asked of the nearest existing folder
    (a missing one is made on its parent's filesystem), 255 when that cannot be told. Asked
    once per folder: a pathconf per file placed and per claim cost 3 % of the agent's CPU."""
    path = Path(folder)
    for candidate in (path, *path.parents):
        try:
            limit = os.pathconf(candidate, "PC_NAME_MAX")
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            break
        return limit if limit > 0 else DEFAULT_NAME_MAX
    return DEFAULT_NAME_MAX


def unique_target(
    folder: str | os.PathLike[str],
    relative: str | os.PathLike[str],
    *,
    with_report: bool = True,
    name_max: Callable[[str], int] = name_limit,
) -> Path:
    """``folder/relative``, or ``name-2.csv``, ``name-3.csv``... when that name (or, with
    ``with_report``, its error report: failed/ only) is taken. A name too long for the folder's
    limit (with ``.error.json`` added, when ``with_report``) is shortened (whole characters; the
    extension and counter kept), so the file and its report both fit; a file in done/ keeps
    every byte of a name that fits. The report's partial name is kept short by
    ``write_error_report``."""
    return Path(unique_name(folder, relative, with_report=with_report, name_max=name_max))


def unique_name(
    folder: str | os.PathLike[str],
    relative: str | os.PathLike[str],
    *,
    with_report: bool = True,
    name_max: Callable[[str], int] = name_limit,
) -> str:
    """``unique_target`` as a string: the placer asks it for every file placed."""
    below, _, name = os.fspath(relative).rpartition("/")
    parent = os.path.join(os.fspath(folder), below) if below else os.fspath(folder)
    budget = name_max(parent) - (_size(REPORT_SUFFIX) if with_report else 0)
    stem, suffix = _split(name)
    n = 1
    while True:
        counter = "" if n == 1 else f"-{n}"
        target = os.path.join(parent, _fit(name, stem, counter, suffix, budget))
        if not os.path.lexists(target) and not (with_report and report_path_for(Path(target))):
            return target
        n += 1


def fit_name(name: str, budget: int) -> str:
    """``name`` cut (whole characters, the extension kept) to ``budget`` bytes."""
    stem, suffix = _split(name)
    return _fit(name, stem, "", suffix, budget)


# An extension of two parts, kept whole: "x.csv.gz" taken gives "x-2.csv.gz", still a drop
# the router reads (``router.DROP_SUFFIXES``); "x.csv-2.gz" would fail when retried.
_DOUBLE_SUFFIXES = (".csv.gz",)


def _split(name: str) -> tuple[str, str]:
    """(stem, extension) of a file name, a double extension such as ``.csv.gz`` as one."""
    for double in _DOUBLE_SUFFIXES:
        if name.lower().endswith(double) and len(name) > len(double):
            return name[: -len(double)], name[-len(double):]
    # As PurePath(name).stem and .suffix, without making a path of every name.
    dot = name.rfind(".")
    if 0 < dot < len(name) - 1:
        return name[:dot], name[dot:]
    return name, ""


def _fit(name: str, stem: str, counter: str, suffix: str, budget: int) -> str:
    if not counter and _size(name) <= budget:
        return name
    if _size(counter + suffix) >= budget:  # an extension longer than the limit: shorten it too
        stem, suffix = name, ""
    return _truncate(stem, budget - _size(counter + suffix)) + counter + suffix


def _size(text: str) -> int:
    return len(os.fsencode(text))


def _truncate(text: str, limit: int) -> str:
    """The longest start of ``text`` within ``limit`` bytes, never half a character."""
    used = 0
    for index, char in enumerate(text):
        used += _size(char)
        if used > limit:
            return text[:index]
    return text
def same_entry(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Two names of one file (hard links), without following symlinks."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def error_report_path(target: Path) -> Path:
    """Where the report on ``target`` goes: ``<name>.error.json`` beside it."""
    return target.with_name(target.name + REPORT_SUFFIX)


def fallback_report_path(target: Path) -> Path:
    """The short report name used when ``<name>.error.json`` is too long for the folder: a start
    of the stem and a hash of the whole name, so each target has its own."""
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:8]
    stem = _truncate(target.stem, FALLBACK_STEM_BYTES)
    return target.with_name(f"{stem}-{digest}{REPORT_SUFFIX}")


def report_path_for(target: Path) -> Path | None:
    """The report on ``target`` that exists, under the usual or the fallback name, else None."""
    for path in (error_report_path(target), fallback_report_path(target)):
        if os.path.lexists(path):  # False, not an error, for a name too long
            return path
    return None


def move_to(
    src: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    durable: bool = True,
    name_max: Callable[[Path], int] = name_limit,
) -> None:
    """Move ``src`` to exactly ``target``, whose folder exists; ``FileExistsError`` if the name
    is taken, which is never overwritten. ``durable=False`` leaves the fsync of ``target``'s
    folder to the caller (``sync_folders``), which can then sync once for many moves."""
    try:
        # link() refuses to replace an existing name, which rename() would silently do.
        os.link(src, target, follow_symlinks=False)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        _move_fallback(Path(src), Path(target), durable=durable, name_max=name_max)
        return
    os.unlink(src)
    if durable:
        _fsync_dir(os.path.dirname(target))


def _move_fallback(
    src: Path, target: Path, *, durable: bool = True, name_max: Callable[[Path], int]
) -> None:
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "target appeared during the move", str(target))
    try:
        os.rename(src, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        partial = _partial_path(target, name_max=name_max)
        # shutil.move keeps a symlink a symlink and copies a directory as a tree.
        shutil.move(str(src), str(partial))
        os.rename(partial, target)
    if durable:
        _fsync_dir(target.parent)


def sync_folders(folders: Iterable[str | os.PathLike[str]]) -> None:
    """fsync each folder once: the names moved into it by ``move_to(durable=False)`` survive a
    power cut from here on."""
    for folder in folders:
        _fsync_dir(folder)


def write_error_report(
    target: Path,
    report: Mapping[str, object],
    *,
    name_max: Callable[[Path], int] = name_limit,
) -> Path:
    """Write ``report`` beside ``target`` (fsynced, renamed into place); returns its path.

    When ``<name>.error.json`` is too long for the folder (by ``name_max``, or refused with
    ENAMETOOLONG), the report goes under ``fallback_report_path(target)`` and names ``target`` in
    its "target" field (and in "file" unless the report names the file already). Any other
    OSError (a full or read-only disk) propagates: the caller must not count the file failed
    until its report exists.
    """
    usual = error_report_path(target)
    if _size(usual.name) <= name_max(target.parent):
        try:
            return _write_atomically(usual, report, name_max=name_max)
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
    named = {"file": target.name, **report, "target": target.name}
    return _write_atomically(fallback_report_path(target), named, name_max=name_max)


def _write_atomically(
    path: Path, report: Mapping[str, object], *, name_max: Callable[[Path], int]
) -> Path:
    partial = _partial_path(path, name_max=name_max)
    try:
        with open(partial, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=2, ensure_ascii=False, default=str)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    _fsync_dir(path.parent)
    return path


def _partial_path(path: Path, *, name_max: Callable[[Path], int]) -> Path:
    """A hidden name to write ``path`` under first; short, hashed, when ``.<name>.partial``
    would not fit the folder's name limit."""
    usual = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    if _size(usual.name) <= name_max(path.parent):
        return usual
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    return path.with_name(f".{digest}{PARTIAL_SUFFIX}")


def _fsync_dir(folder: str | os.PathLike[str]) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
