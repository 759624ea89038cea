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
def naming_the_file(path: Path) -> Iterator[None]:
    """An OSError that names no file (a full disk on write or fsync) is raised again naming `path`."""
    try:
        yield
    except OSError as error:
        if error.errno is not None and error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


@contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """Open a text file to write that appears at `path` only when the `with` block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with naming_the_file(path):
            os.fchmod(descriptor, 0o644)  # mkstemp makes 0600; a report is for others to read
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(aside, path)
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


class FileSet:
    """Files written aside (`.NAME.part`, beside their final names) and published together, or not at all.

    `publish` renames every file into place; should one rename fail, the files already renamed are
    removed again, so a failure leaves no file under a final name. `discard` removes what was written
    aside. The names aside are fixed, so the leftovers of a killed run can be found by the next one
    (`remove_leftovers`).
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}

    @staticmethod
    def aside_path(final: Path) -> Path:
        return final.with_name(f".{final.name}.part")

    def path_for(self, final: Path) -> Path:
        """Where to write `final` aside; the file is published with the others."""
        final.parent.mkdir(parents=True, exist_ok=True)
        aside = self.aside_path(final)
        self._staged[final] = aside
        return aside

    @contextmanager
    def text(self, final: Path) -> Iterator[TextIO]:
        aside = self.path_for(final)
        with naming_the_file(final), open(aside, "w", encoding="utf-8", newline="") as out:
            yield out

    def write_text(self, final: Path, content: str) -> None:
        with self.text(final) as out:
            out.write(content)

    def write_bytes(self, final: Path, content: bytes) -> None:
        with naming_the_file(final):
            self.path_for(final).write_bytes(content)

    def publish(self) -> None:
        for aside in self._staged.values():
            _sync_file(aside)
        published: list[Path] = []
        try:
            for final, aside in self._staged.items():
                os.chmod(aside, 0o644)
                os.replace(aside, final)
                published.append(final)
        except BaseException:
            for final in published:
                final.unlink(missing_ok=True)
            self.discard()
            raise
        for directory in {final.parent for final in published}:
            _sync_directory(directory)
        self._staged.clear()

    def discard(self) -> None:
        for aside in self._staged.values():
            aside.unlink(missing_ok=True)
        self._staged.clear()


def remove_leftovers(directory: Path, pattern: str) -> list[str]:
    """Remove the files aside (`.part`) matching `pattern` that a killed run left; their names."""
    if not directory.is_dir():
        return []
    removed = []
    for leftover in sorted(directory.glob(pattern)):
        if leftover.name.endswith(".part") and leftover.name.startswith("."):
            leftover.unlink(missing_ok=True)
            removed.append(leftover.name)
    return removed


def _sync_file(path: Path) -> None:
    with open(path, "rb+") as out:
        os.fsync(out.fileno())
