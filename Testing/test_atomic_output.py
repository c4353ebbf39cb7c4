"""atomic_output_dir: a result folder appears complete or not at all."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from LiverTumorAILib.errors import OutputError
from LiverTumorAILib.io.atomic import MARKER, atomic_output_dir, write_npz_atomic


def _names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_success_renames_staging(tmp_path: Path) -> None:
    out = tmp_path / "result"
    with atomic_output_dir(out) as staging:
        assert staging.parent == tmp_path and staging.name == f".result.partial-{os.getpid()}"
        assert not out.exists()
        (staging / "report.json").write_text("{}")
    assert _names(out) == [MARKER, "report.json"]
    assert _names(tmp_path) == ["result"]


def test_creates_missing_parents(tmp_path: Path) -> None:
    with atomic_output_dir(tmp_path / "a" / "b" / "out") as staging:
        (staging / "x").write_text("1")
    assert (tmp_path / "a" / "b" / "out" / "x").exists()


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_exception_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        with atomic_output_dir(tmp_path / "out") as staging:
            (staging / "segmentation.nii.gz").write_bytes(b"half")
            raise exc
    assert _names(tmp_path) == []


def test_existing_outdir_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "corrected.seg.nrrd").write_text("manual edits")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        with atomic_output_dir(out):
            pytest.fail("must not start")
    assert (out / "corrected.seg.nrrd").read_text(encoding="utf-8") == "manual edits"
    assert _names(tmp_path) == ["out"]


def test_existing_file_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputError, match="not a folder"):
        with atomic_output_dir(tmp_path / "out", overwrite=True):
            pass


def test_overwrite_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_output_dir(out) as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
            assert (out / "old.txt").exists()  # old result still there while running
            raise RuntimeError("model failed")
    assert _names(out) == [MARKER, "old.txt"] and _names(tmp_path) == ["out"]
    with atomic_output_dir(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert _names(out) == [MARKER, "new.txt"] and _names(tmp_path) == ["out"]


@pytest.mark.parametrize("marked", [False, True])
def test_overwrite_never_deletes_what_livertumorai_did_not_write(tmp_path: Path, marked: bool) -> None:
    """`-o case --overwrite` where case/ holds the user's CT (or a result the user added notes to):
    refused before any work, and nothing in the folder changes."""
    out = tmp_path / "case"
    if marked:
        with atomic_output_dir(out) as staging:
            (staging / "report.json").write_text("{}")
    else:
        out.mkdir()
    (out / "ct.nii.gz").write_bytes(b"the patient's scan")
    (out / "notes").mkdir()
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(OutputError, match=r"holds what LiverTumorAI did not write there \(ct.nii.gz, notes\)"):
        with atomic_output_dir(out, overwrite=True):
            pytest.fail("must not start")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "ct.nii.gz").read_bytes() == b"the patient's scan" and _names(tmp_path) == ["case"]


def test_a_file_added_while_running_stops_the_replacement(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_output_dir(out) as staging:
        (staging / "report.json").write_text("old")
    with pytest.raises(OutputError, match="did not write there \\(edited.seg.nrrd\\)"):
        with atomic_output_dir(out, overwrite=True) as staging:
            (staging / "report.json").write_text("new")
            (out / "edited.seg.nrrd").write_text("manual edits")
    assert _names(out) == [MARKER, "edited.seg.nrrd", "report.json"]
    assert (out / "report.json").read_text() == "old" and _names(tmp_path) == ["out"]


def test_an_empty_folder_may_be_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with atomic_output_dir(out, overwrite=True) as staging:
        (staging / "report.json").write_text("{}")
    assert _names(out) == [MARKER, "report.json"]


def test_disk_full_is_output_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    real_write = os.write

    def full(fd, data):
        if len(data) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with pytest.raises(OutputError, match="disk is full"):
        with atomic_output_dir(tmp_path / "out") as staging:
            (staging / "small.json").write_text("{}")
            monkeypatch.setattr(os, "write", full)
            fd = os.open(staging / "big.bin", os.O_WRONLY | os.O_CREAT)
            try:
                os.write(fd, b"\0" * 100_000)
            finally:
                os.close(fd)
    monkeypatch.undo()
    assert _names(tmp_path) == []


@pytest.mark.parametrize("code,text", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_permission_and_readonly_errors_mapped(tmp_path: Path, code: int, text: str) -> None:
    with pytest.raises(OutputError, match=text):
        with atomic_output_dir(tmp_path / "out"):
            raise PermissionError(code, os.strerror(code))
    assert _names(tmp_path) == []


def test_other_oserror_propagates_but_cleans(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with atomic_output_dir(tmp_path / "out"):
            raise FileNotFoundError(errno.ENOENT, "gone")
    assert _names(tmp_path) == []


def test_unwritable_parent(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the parent folder"):
        with atomic_output_dir(tmp_path / "file" / "out"):
            pass
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(OutputError, match="permission denied"):
            with atomic_output_dir(ro / "out"):
                pass
    finally:
        ro.chmod(0o755)


def test_read_only_tmpfs_if_available(tmp_path: Path) -> None:
    """A real EROFS where the machine allows mounting (root, no container restriction)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(OutputError, match="read-only"):
            with atomic_output_dir(mnt / "out"):
                pass
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_tiny_tmpfs_disk_full_if_available(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(OutputError, match="disk is full"):
            with atomic_output_dir(mnt / "out") as staging:
                (staging / "big.bin").write_bytes(b"\0" * 1_000_000)
        assert _names(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_stale_staging_from_killed_run_is_removed(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = tmp_path / f".out.partial-{p.pid}"
    stale.mkdir()
    (stale / "half.nii.gz").write_bytes(b"x")
    with atomic_output_dir(tmp_path / "out") as staging:
        (staging / "a").write_text("1")
    assert _names(tmp_path) == ["out"]


def test_write_npz_atomic_writes_exactly_the_path_and_keeps_the_old_file_on_failure(tmp_path):
    import numpy as np

    path = tmp_path / "sub" / "crops_val.npz.part"  # a name np.savez would otherwise extend with ".npz"
    write_npz_atomic(path, {"a": np.arange(3)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["crops_val.npz.part"]
    with np.load(path, allow_pickle=False) as z:
        assert z["a"].tolist() == [0, 1, 2]
    class Unconvertible:  # fails while savez is writing the archive
        def __array__(self, *args, **kwargs):
            raise RuntimeError("cannot convert")

    with pytest.raises(RuntimeError, match="cannot convert"):
        write_npz_atomic(path, {"b": np.zeros(2), "a": Unconvertible()})
    assert sorted(p.name for p in path.parent.iterdir()) == ["crops_val.npz.part"]
    with np.load(path, allow_pickle=False) as z:
        assert z["a"].tolist() == [0, 1, 2]
