"""Atomic file writes: never-overwriting outputs, and the few files that are meant to be replaced.

A file is written to a temporary name in the destination folder, flushed, and then hard-linked to its final
name; ``os.link`` fails if the name exists, so an existing file is never replaced and a crash mid-write never
leaves a half-written file under the final name. An existing output is refused with :class:`OutputExistsError`
(:func:`check_free` before the work). :func:`replace_atomically` is for the files that are rewritten in place
on purpose (a training set's manifest, a run folder's last checkpoint, saved form values): readers see the old
or the new file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


NOT_OVERWRITTEN = "choose another name (nothing was overwritten)"


class OutputExistsError(FileExistsError):
    """``path`` already exists and will not be overwritten: "PATH already exists; ADVICE" (what to do instead)."""

    def __init__(self, path: str | Path, advice: str = NOT_OVERWRITTEN) -> None:
        super().__init__(f"{path} already exists; {advice}")
        self.path, self.advice = str(path), advice

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by Dask workers: rebuild from the path, not the message
        return type(self), (self.path, self.advice)


def check_free(*paths: str | Path | None) -> None:
    """Raise :class:`OutputExistsError` for the first of ``paths`` that exists (None is skipped): call it before
    the work, so a clash fails at once instead of after it."""
    for path in paths:
        if path is not None and Path(path).exists():
            raise OutputExistsError(path)


def _commit(tmp: Path, dest: Path) -> None:
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise OutputExistsError(dest) from None
    except OSError:  # filesystems without hard links: fall back to an exclusive check + rename
        if dest.exists():
            raise OutputExistsError(dest) from None
        os.replace(tmp, dest)
        return
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it becomes ``dest``, on error it is removed.

    ``dest`` must not exist (checked first and again at the commit). ``suffix`` defaults to dest's suffix so
    writers that look at the extension (tifffile, torch) behave the same.
    """
    dest = Path(dest)
    check_free(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=(dest.suffix if suffix is None else suffix) + ".part",
                                dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; published files get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _commit(tmp, dest)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | Path, commit: Callable[[Path], None] | None = None,
               beside: str | Path | None = None) -> Iterator[Path]:
    """Yield a not-yet-existing temporary folder path beside ``dest`` (a zarr store, say); on success it is
    renamed to ``dest``, on error deleted. ``dest`` must not exist (checked first and again before the rename).

    ``commit(tmp)``, when given, publishes the finished folder instead of that rename (e.g. into a store another
    writer has not finished yet): it moves ``tmp`` or raises. ``beside``: the folder to make the temporary one in
    (default ``dest``'s parent, which is then created)."""
    dest = Path(dest)
    check_free(dest)
    folder = dest.parent if beside is None else Path(beside)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=folder))
    shutil.rmtree(tmp)
    try:
        yield tmp
        if commit is not None:
            commit(tmp)
        else:
            check_free(dest)
            os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(dest: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and atomically publish the result as ``dest`` (never overwriting)."""
    with atomic_path(dest) as tmp:
        write(tmp)
    return Path(dest)


def atomic_write_bytes(dest: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``dest`` (never overwriting)."""
    return atomic_write(dest, lambda p: p.write_bytes(data))


def replace_atomically(dest: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` (a free name beside ``dest``, with ``dest``'s suffix) and move the result over
    ``dest``, replacing any old file in one step (``os.replace``); on an error the temporary file is removed and
    ``dest`` is left as it was."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part" + dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # ``write`` creates it (with the usual permissions; writers that refuse an existing file work)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def unique_path(dest: str | Path) -> Path:
    """``dest`` if free, else ``stem-1.suffix``, ``stem-2.suffix``, ... (the first free name)."""
    dest = Path(dest)
    if not dest.exists():
        return dest
    stem, suffix = dest.name.split(".", 1) if "." in dest.name else (dest.name, "")
    dot = "." if suffix else ""
    i = 1
    while True:
        cand = dest.with_name(f"{stem}-{i}{dot}{suffix}")
        if not cand.exists():
            return cand
        i += 1
