"""Report files that appear whole, and only once the run that wrote them is recorded.

A job writes each file aside, as a hidden `.NAME.part` beside its final name (`FileSet`), and `seal`s
them (flushed to disk) before the transaction that records its run; only after that commit does it
`publish` them (renamed into place). So a reader never sees a half-written file, and no file appears
under a final name for a run that is not recorded. The names aside are fixed, so whatever a killed run
left is found by the next run of the job (`settle_leftovers`): the files of a run recorded before the
kill are published, the rest removed.

A failure names the file: an `OSError` while writing, syncing or renaming is raised as `CannotWrite`,
"cannot write reports/….csv: No space left on device", one line.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO


class CannotWrite(OSError):
    """A report file could not be written, synced or published; names the file, one line."""

    def __init__(self, path: Path, error: OSError, doing: str = "write") -> None:
        super().__init__(error.errno, error.strerror or str(error), str(path))
        self.doing = doing

    def __str__(self) -> str:
        return f"cannot {self.doing} {self.filename}: {self.strerror}"


@contextmanager
def naming_the_file(path: Path, doing: str = "write") -> Iterator[None]:
    """An OSError inside (a full disk on write or fsync, a read-only folder on open) is raised again as
    `CannotWrite` naming `path`, the file's final name (never its name aside)."""
    try:
        yield
    except CannotWrite:
        raise
    except OSError as error:
        raise CannotWrite(path, error, doing) from error


@contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """Open a text file to write that appears at `path` only when the `with` block ends without error
    (for files that no run record stands behind, e.g. `report --output`)."""
    with naming_the_file(path):
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


def aside_path(final: Path) -> Path:
    """Where `final` is written before it is published: hidden, beside it, a fixed name."""
    return final.with_name(f".{final.name}.part")


@dataclass
class FileSet:
    """Files written aside and published together once their run is recorded, or not at all.

    `seal` flushes them to disk (before the run is recorded: a recorded run's files survive a crash),
    `publish` renames them into place (after: the files never name a run that is not recorded),
    `discard` removes what is still aside (a failure before the record). A publish interrupted by a
    kill or a failure leaves the rest aside for the job's next run to publish (`settle_leftovers`).
    """

    _staged: dict[Path, Path] = field(default_factory=dict)

    def path_for(self, final: Path) -> Path:
        """Where to write `final` aside; the file is published with the others."""
        with naming_the_file(final):
            final.parent.mkdir(parents=True, exist_ok=True)
        aside = aside_path(final)
        self._staged[final] = aside
        return aside

    @contextmanager
    def text(self, final: Path) -> Iterator[TextIO]:
        aside = self.path_for(final)
        with naming_the_file(final), open(aside, "w", encoding="utf-8", newline="") as out:
            yield out

    @contextmanager
    def writing(self, final: Path) -> Iterator[Path]:
        """The path aside to write `final` to by other means (a workbook library), errors naming `final`."""
        aside = self.path_for(final)
        with naming_the_file(final):
            yield aside

    def write_text(self, final: Path, content: str) -> None:
        with self.text(final) as out:
            out.write(content)

    def seal(self) -> None:
        """Every file aside on disk, readable by others: what a recorded run's files must be."""
        for final, aside in self._staged.items():
            with naming_the_file(final):
                os.chmod(aside, 0o644)
                _sync_file(aside)
        for directory in {aside.parent for aside in self._staged.values()}:
            _sync_directory(directory)

    def publish(self) -> None:
        """Rename every file into place (the run is recorded). On a failure the rest stay aside."""
        finals = list(self._staged)
        for final in finals:
            publish_aside(self._staged.pop(final), final)
        _sync_directories(finals)

    def discard(self) -> None:
        """Remove the files still aside; one that cannot be removed (a read-only folder) is left for
        the next run."""
        for aside in self._staged.values():
            try:
                aside.unlink(missing_ok=True)
            except OSError:
                pass
        self._staged.clear()


def publish_aside(aside: Path, final: Path) -> None:
    with naming_the_file(final, "publish"):
        os.replace(aside, final)


@dataclass
class Settled:
    """What `settle_leftovers` did: files of recorded runs published, files of other runs removed."""

    published: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def settle_leftovers(directory: Path, pattern: str, run_of: Callable[[str], int | None],
                     recorded: Callable[[set[int]], set[int]]) -> Settled:
    """Settle the files aside (`.NAME.part`) matching `pattern` that earlier runs left: publish those of
    runs recorded (`recorded(ids)` says which, `run_of(NAME)` which run a file is of), remove the others.

    Call it only while no other run of the job can be writing (holding the job's run): every file aside
    is then a leftover of a run that ended."""
    settled = Settled()
    if not directory.is_dir():
        return settled
    leftovers = {aside: aside.name[1:-len(".part")] for aside in sorted(directory.glob(pattern))
                 if aside.name.startswith(".") and aside.name.endswith(".part")}
    runs = {aside: run_of(name) for aside, name in leftovers.items()}
    published_runs = recorded({run for run in runs.values() if run is not None})
    for aside, name in leftovers.items():
        final = directory / name
        if runs[aside] in published_runs:
            publish_aside(aside, final)
            settled.published.append(name)
        else:
            with naming_the_file(final, "remove"):
                aside.unlink(missing_ok=True)
            settled.removed.append(aside.name)
    _sync_directory(directory)
    return settled


def _sync_file(path: Path) -> None:
    with open(path, "rb+") as out:
        os.fsync(out.fileno())


def _sync_directories(paths: Iterable[Path]) -> None:
    for directory in {path.parent for path in paths}:
        _sync_directory(directory)


def _sync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); harmless where directories cannot be opened."""
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
