"""Report files that appear whole: written aside in the same directory, synced, then renamed.

A reader (or a spreadsheet) never sees a half-written file: until `os.replace` the content lives in a
hidden `.NAME.*.part` file beside the target, and a failure while writing removes it.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO


@contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """Open a text file to write that appears at `path` only when the `with` block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(descriptor, 0o644)  # mkstemp makes 0600; a report is for others to read
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(aside, path)
    except OSError as error:
        Path(aside).unlink(missing_ok=True)
        if error.errno is not None and error.filename is None:  # a full disk on write/fsync names no file
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(aside).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def write_text_atomically(path: Path, content: str) -> None:
    with atomic_text_file(path) as out:
        out.write(content)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
