"""Where a command may write: inside its --out folder, never over one of its inputs, never through a link.

`OutputFolder.prepare(out, inputs)` checks the folder once, up front (not a file, not a kernel file system,
writable: a probe file is made and removed), and remembers the input files (the photo, a mask, an
inversion file, a manifest, ...) by device and inode, so a hard link or another spelling of an input is
recognised too. `folder.path(name)` is then the only way to a file to write: every component below --out is
checked with lstat (a link planted inside --out is refused, not followed), each name must be one plain
component (no separator, no `..`), and a name that is an input file is refused. The writes themselves go
through editing.core.files (per-process temporary names, then an atomic rename).
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from editing.core.errors import UserError
from editing.core.files import temporary_name

# Kernel file systems: their "files" are views of the running system, never a place for results.
KERNEL_FOLDERS = ("/proc", "/sys")
# Output folder names made from user text: letters, digits, '_', '.', '-'; never hidden, never longer than this
# (file systems allow 255 bytes, and a UTF-8 character may take 4).
MAX_NAME_CHARS = 60

PathLike = str | os.PathLike


def safe_name(text: str) -> str:
    """A folder name that cannot leave the output folder: no separators, no '..', not hidden, not empty."""
    name = re.sub(r"[^\w.-]+", "_", str(text)).strip("._-")[:MAX_NAME_CHARS].rstrip("._-")
    return name or "image"


def unique_names(names: Sequence[str], keys: Sequence[str], reserved: Iterable[str] = ()) -> list[str]:
    """safe_name of each name, unique even where file systems ignore case: a taken name gets a short hash of
    its key (what identifies it in the input)."""
    taken, out = {n.lower() for n in reserved}, []
    for name, key in zip(names, keys):
        base = candidate = safe_name(name)
        salt = 0
        while candidate.lower() in taken:
            candidate = f"{base}-{hashlib.sha256(f'{key}#{salt}'.encode()).hexdigest()[:6]}"
            salt += 1
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def _identity(path: PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def input_identities(inputs: Iterable[PathLike | None]) -> frozenset[tuple[int, int]]:
    """(device, inode) of every input that is an existing regular file."""
    found = (_identity(p) for p in inputs if p)
    return frozenset(i for i in found if i is not None)


def refuse_input(path: PathLike, inputs: frozenset[tuple[int, int]], what: str) -> None:
    """UserError when writing `path` would replace one of the inputs."""
    if _identity(path) in inputs:
        raise UserError(f"{what} {path} is one of this run's input files; writing it would destroy the input: "
                        "give another output path")


def _check_part(part: str) -> str:
    part = str(part)
    if not part or part in (".", "..") or "/" in part or (os.altsep and os.altsep in part) or "\0" in part:
        raise UserError(f"output name {part!r} is not a plain file or folder name inside the output folder")
    return part


@dataclass(frozen=True)
class OutputFolder:
    """A checked output folder: `root` is --out as given; `under` names a sub-folder below it."""

    root: Path
    inputs: frozenset = frozenset()  # (device, inode) of every input file
    under: tuple[str, ...] = ()
    made: tuple[Path, ...] = ()  # the folders prepare created (--out and missing parents), deepest first

    @classmethod
    def prepare(cls, out: PathLike, inputs: Iterable[PathLike | None] = (), what: str = "--out") -> "OutputFolder":
        """Check `out` up front (create it if missing) and remember the inputs it must never replace."""
        root = Path(out)
        resolved = os.path.realpath(root)
        for kernel in KERNEL_FOLDERS:
            if resolved == kernel or resolved.startswith(kernel + os.sep):
                raise UserError(f"{what} {out} is under {kernel}, a kernel file system that cannot hold files; "
                                "give a folder on a disk")
        if root.exists() and not root.is_dir():
            raise UserError(f"{what} {out} is a file, not a folder; give a folder (it is created if missing)")
        made = tuple(folder for folder in (root, *root.parents) if not folder.exists())
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = temporary_name(root / "write-test")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
            os.unlink(probe)
        except OSError as error:
            raise UserError(f"cannot write to {what} {out}: {error.strerror or error}; give a writable folder") \
                from None
        return cls(root, input_identities(inputs), made=made)

    def with_inputs(self, inputs: Iterable[PathLike | None]) -> "OutputFolder":
        """The same folder, also guarding these input files."""
        return OutputFolder(self.root, self.inputs | input_identities(inputs), self.under, self.made)

    def child(self, *parts: str) -> "OutputFolder":
        """The sub-folder `parts` below this one (each a plain name), checked when a file in it is asked for."""
        return OutputFolder(self.root, self.inputs, self.under + tuple(_check_part(p) for p in parts), self.made)

    def remove_if_unused(self) -> None:
        """Remove the folders prepare made while they are still empty: a run refused before it wrote anything
        leaves no trace. A folder with anything in it is never touched (rmdir refuses)."""
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:
                return

    @property
    def folder(self) -> Path:
        return self.root.joinpath(*self.under)

    def path(self, *parts: str) -> Path:
        """The checked path of a file to write at `parts` below this folder; missing folders are made.

        Refuses a name that is not one plain component, any link below --out (lstat: never followed), and a
        name that is an input file (also through a hard link)."""
        names = self.under + tuple(_check_part(p) for p in parts)
        if not names:
            raise UserError("an output file needs a name inside the output folder")
        current = self.root
        for depth, name in enumerate(names):
            current = current / name
            last = depth == len(names) - 1
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                if not last:
                    self._mkdir(current)
                continue
            except OSError as error:
                raise UserError(f"cannot use {current}: {error.strerror or error}") from None
            if stat.S_ISLNK(info.st_mode):
                raise UserError(f"{current} is a link inside the output folder {self.root}; the toolkit never "
                                "writes through links there: remove it, or give another --out")
            if not last and not stat.S_ISDIR(info.st_mode):
                raise UserError(f"{current} is a file where the output folder needs a folder; remove it or give "
                                "another --out")
            if last and stat.S_ISDIR(info.st_mode):
                raise UserError(f"{current} is a folder where an output file must go; remove it or give "
                                "another --out")
        refuse_input(current, self.inputs, "output file")
        return current

    def _mkdir(self, folder: Path) -> None:
        try:
            os.mkdir(folder)
        except FileExistsError:  # another process made it: check it again on the next call
            if os.path.islink(folder) or not os.path.isdir(folder):
                raise UserError(f"{folder} appeared as a link or file inside the output folder; remove it") from None
        except OSError as error:
            raise UserError(f"cannot create {folder}: {error.strerror or error}; check the folder is writable") \
                from None
