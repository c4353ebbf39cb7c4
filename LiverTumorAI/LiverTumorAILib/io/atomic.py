"""All-or-nothing output folders.

A run writes into a staging folder `.OUTDIR.partial-<pid>` next to OUTDIR and renames it to
OUTDIR only when everything succeeded, so a failure, Ctrl-C or SIGTERM never leaves a
half-written result that a user (or Slicer) could mistake for a finished one.

`--overwrite` replaces only what LiverTumorAI wrote: each output folder carries a list of its
entries (`MARKER`), and a folder holding anything else (the CT the user pointed `-o` at, notes,
a whole patient folder given as `-o .`) is refused, never deleted. An empty folder may be
replaced.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from LiverTumorAILib.errors import OutputError

#: OS errors that mean "this location cannot take the output", reported as OutputError.
_OUTPUT_ERRNOS = {
    errno.ENOSPC: "disk is full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "file system is read-only",
}


#: written into every output folder: the names of the entries LiverTumorAI put there
MARKER = ".livertumorai-output.json"
#: how many foreign names an error message lists
_NAMES_SHOWN = 5


def _reason(err: OSError) -> str:
    return _OUTPUT_ERRNOS.get(err.errno or 0, err.strerror or str(err))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_staging(outdir: Path) -> None:
    """Remove staging folders left by killed runs (SIGKILL, power loss) for this OUTDIR."""
    prefix = f".{outdir.name}.partial-"
    try:
        candidates = [p for p in outdir.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for p in candidates:
        pid = p.name[len(prefix):]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_output_dir(outdir: Union[str, os.PathLike], overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes `outdir`, on any exception it is removed.

    An existing `outdir` is refused unless `overwrite`; with `overwrite` it is replaced only
    after the new result is complete, and only when it holds nothing but an earlier output
    (`refuse_foreign_entries`). Disk full / permission / read-only errors become
    `OutputError`.
    """
    outdir = Path(outdir).absolute()
    name = outdir.name
    check_output_location(outdir, overwrite)
    parent = outdir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{name}: cannot create the parent folder {parent} ({_reason(e)})") from None
    _remove_stale_staging(outdir)
    staging = parent / f".{name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
    except OSError as e:
        raise OutputError(f"{name}: cannot write in {parent} ({_reason(e)})") from None

    try:
        yield staging
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.errno in _OUTPUT_ERRNOS:
            raise OutputError(f"{name}: output could not be written ({_reason(e)}); "
                              "nothing was left behind") from e
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    try:
        _write_marker(staging)
        _commit(staging, outdir, overwrite)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{name}: could not be put in place ({_reason(e)})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit(staging: Path, outdir: Path, overwrite: bool) -> None:
    """Rename staging -> outdir; an old outdir is moved aside first and restored on failure."""
    if not (outdir.exists() or outdir.is_symlink()):
        os.rename(staging, outdir)
        return
    if not overwrite:  # appeared while we were working
        raise OutputError(f"{outdir.name}: output folder appeared while running ({outdir}); "
                          "use --overwrite to replace it")
    refuse_foreign_entries(outdir)  # files may have been added while we were working
    old = outdir.parent / f".{outdir.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    os.rename(outdir, old)
    try:
        os.rename(staging, outdir)
    except BaseException:
        os.rename(old, outdir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_output_location(outdir: Union[str, os.PathLike], overwrite: bool) -> None:
    """OutputError unless `outdir` may become the output: absent, or (with `overwrite`) a folder
    holding only an earlier output. Cheap, so the CLI calls it before loading any model."""
    outdir = Path(outdir).absolute()
    if outdir.exists() or outdir.is_symlink():
        if not outdir.is_dir():
            raise OutputError(f"{outdir.name}: exists and is not a folder ({outdir})")
        if not overwrite:
            raise OutputError(f"{outdir.name}: output folder already exists ({outdir}); "
                              "use --overwrite to replace it")
        refuse_foreign_entries(outdir)


def foreign_entries(outdir: Path) -> list[str]:
    """Names in `outdir` that LiverTumorAI did not write there: all of them when the folder has no
    readable `MARKER` (not an output of ours), else those the marker does not list."""
    try:
        names = sorted(p.name for p in Path(outdir).iterdir())
    except OSError as e:
        raise OutputError(f"{Path(outdir).name}: cannot read the existing folder ({_reason(e)})") from None
    ours: set[str] = set()
    if MARKER in names:
        try:
            listed = json.loads((Path(outdir) / MARKER).read_text(encoding="utf-8")).get("entries", [])
            ours = {n for n in listed if isinstance(n, str)} | {MARKER}
        except (OSError, ValueError, AttributeError):
            ours = set()
    return [n for n in names if n not in ours]


def refuse_foreign_entries(outdir: Union[str, os.PathLike]) -> None:
    """OutputError when replacing `outdir` would delete anything LiverTumorAI did not write."""
    outdir = Path(outdir).absolute()
    foreign = foreign_entries(outdir)
    if foreign:
        shown = ", ".join(foreign[:_NAMES_SHOWN]) + (f" and {len(foreign) - _NAMES_SHOWN} more"
                                                   if len(foreign) > _NAMES_SHOWN else "")
        raise OutputError(f"{outdir.name}: --overwrite replaces only a LiverTumorAI output folder, and {outdir} "
                          f"holds what LiverTumorAI did not write there ({shown}); nothing was changed: "
                          "choose a new output folder")


def _write_marker(staging: Path) -> None:
    """List the staging folder's entries in `MARKER`, so a later --overwrite knows what is ours."""
    names = sorted(p.name for p in staging.iterdir() if p.name != MARKER)
    (staging / MARKER).write_text(json.dumps({"software": "LiverTumorAI", "entries": names}), encoding="utf-8")


@contextmanager
def atomic_file(path: Union[str, os.PathLike], what: str = "file") -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds.

    A reader never sees half a file; on any failure the temporary file is removed and an
    OSError becomes one-line `OutputError` naming the file ("disk is full", ...)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path.name}: cannot write {what} ({_reason(err)})") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def _with_parent(path: Union[str, os.PathLike]) -> Path:
    """`path` as a Path, its folder created (a one-line `OutputError` if it cannot be)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path.parent.name}: cannot create folder ({_reason(err)})") from None
    return path


def write_text_atomic(path: Union[str, os.PathLike], text: str, what: str = "file") -> Path:
    """Write `text` (UTF-8) to `path` atomically, creating its folder."""
    path = _with_parent(path)
    with atomic_file(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_npz_atomic(path: Union[str, os.PathLike], arrays: dict, what: str = "file") -> Path:
    """`np.savez` of `arrays` to exactly `path` (no ".npz" appended), atomically, creating its folder."""
    import numpy as np

    path = _with_parent(path)
    with atomic_file(path, what) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez(fh, **arrays)
    return path
