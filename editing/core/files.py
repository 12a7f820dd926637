"""Writing files so that no reader ever sees half of one: the bytes go to a temporary name in the same folder,
are flushed to the disk (fsync), and only then take the final name (an atomic rename). A crash at any moment
leaves the old file or the new one, never a torn one, and at worst a hidden `.NAME.*.tmp` beside it.
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from editing.core.errors import UserError


def temporary_name(path: Path) -> Path:
    """A hidden, unique name beside `path` (same folder, so the rename stays on one file system)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on success it is fsynced and renamed to `path`.

    For writers that want a file name (safetensors' save_file); on any error the temporary file is removed
    and `path` is untouched. An OSError becomes a UserError that names the path.
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror or error}; check the folder is writable") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write bytes, text (UTF-8) or, through a callable given the temporary path, anything to `path` atomically."""
    with atomic_path(path) as temporary:
        if callable(data):
            data(temporary)
        else:
            payload = data.encode() if isinstance(data, str) else bytes(data)
            # O_EXCL: never write into a file someone else made; 0o666 lets the umask set the permissions
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as file:
                file.write(payload)
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    """JSON (indented, UTF-8), written atomically."""
    return atomic_write(path, json.dumps(data, indent=2) + "\n")
