"""Run the engine in a background process so that 3D Slicer never freezes.

Why a process and not a thread: inference holds the GIL for long stretches (torch ops
release it, but pre/post-processing in numpy/SimpleITK does not always), a crash or an
out-of-memory kill must not take Slicer down with it, and Cancel must stop *everything*
(data-loader workers included) at once. So the Slicer module builds a `livertumorai`
command line, starts it here, and polls for events from a QTimer.

This file is engine side: standard library only, no `slicer`/`qt` imports, so it is
tested with plain pytest against real subprocesses (Testing/test_runner.py).

Protocol (CONTRIBUTING.md, "Progress protocol"): with `--progress json` the CLI writes
one JSON object per line on stderr (`progress`, `warning`, `done`, `error` events).
Anything else on stderr is kept as log text; the last `livertumorai: error: ...` line
(or the last line of a traceback) becomes the run's one readable error message.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence

#: Folder that holds the `LiverTumorAILib` package; put on PYTHONPATH of the child so
#: `python -m LiverTumorAILib` works from Slicer's own Python, where the module folder of
#: an extension is not necessarily on the default path.
ENGINE_PARENT = Path(__file__).resolve().parents[1]

#: How long `cancel()` waits after the polite signal before killing the process tree.
DEFAULT_GRACE_S = 3.0

Event = Dict[str, Any]


# --------------------------------------------------------------------------- parsing
def _parse_progress_line_local(line: str) -> Optional[Event]:
    """Parse one `--progress json` line; None for anything that is not a protocol event."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return None
    return obj


def parse_progress_line(line: str) -> Optional[Event]:
    """Parse a progress line with the engine's own parser when present (one source of truth).

    `LiverTumorAILib.progress.parse_progress_line` is written alongside the CLI; until it
    exists (or if it returns something other than a dict) the local parser is used.
    """
    try:
        from LiverTumorAILib.progress import parse_progress_line as engine_parse  # noqa: PLC0415
    except Exception:  # ImportError, or a half-written module while developing
        return _parse_progress_line_local(line)
    try:
        parsed = engine_parse(line)
    except Exception:
        return _parse_progress_line_local(line)
    if parsed is None:
        return None
    if isinstance(parsed, dict):
        return parsed
    # A dataclass/namedtuple event: normalise to a dict so callers see one shape.
    for attr in ("to_dict", "_asdict"):
        if hasattr(parsed, attr):
            return dict(getattr(parsed, attr)())
    if hasattr(parsed, "__dict__"):
        return dict(vars(parsed))
    return _parse_progress_line_local(line)


# ------------------------------------------------------------------ command builders
def engine_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment for the child: engine importable, output unbuffered (live progress)."""
    env = dict(os.environ if base is None else base)
    paths = [str(ENGINE_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _engine(python: Optional[str]) -> List[str]:
    return [python or sys.executable, "-m", "LiverTumorAILib"]


def segment_command(
    ct: os.PathLike | str,
    outdir: os.PathLike | str,
    *,
    mri: Optional[os.PathLike | str] = None,
    model: str = "dual-stream",
    device: str = "auto",
    classify: bool = True,
    heatmap: bool = True,
    weights: Optional[os.PathLike | str] = None,
    python: Optional[str] = None,
    hu_checks: bool = True,
    mri_assist: bool = True,
) -> List[str]:
    """`livertumorai segment CT [--mri MRI] --model M --device D ... -o OUTDIR --progress json`."""
    if model == "fusion" and not mri:
        raise ValueError("the fusion model needs an MRI volume")
    cmd = _engine(python) + ["segment", str(ct)]
    if mri:
        cmd += ["--mri", str(mri)]
    cmd += ["--model", model, "--device", device]
    if not classify:
        cmd.append("--no-classify")
    if not heatmap:
        cmd.append("--no-heatmap")
    if not hu_checks:
        cmd.append("--no-hu-checks")
    if mri and not mri_assist:
        cmd.append("--no-mri-assist")
    if weights:
        cmd += ["--weights", str(weights)]
    cmd += ["-o", str(outdir), "--progress", "json"]
    return cmd


def classify_command(
    ct: os.PathLike | str,
    seg: os.PathLike | str,
    outdir: os.PathLike | str,
    *,
    mri: Optional[os.PathLike | str] = None,
    device: str = "auto",
    weights: Optional[os.PathLike | str] = None,
    python: Optional[str] = None,
) -> List[str]:
    """`livertumorai classify CT --seg SEG -o OUTDIR --progress json`: re-measure/re-classify edited lesions."""
    cmd = _engine(python) + ["classify", str(ct), "--seg", str(seg)]
    if mri:
        cmd += ["--mri", str(mri)]
    cmd += ["--device", device]
    if weights:
        cmd += ["--weights", str(weights)]
    cmd += ["-o", str(outdir), "--progress", "json"]
    return cmd


def phantom_command(
    outdir: os.PathLike | str, *, count: int = 1, seed: int = 0, size: Optional[int] = None,
    slices: Optional[int] = None, python: Optional[str] = None,
) -> List[str]:
    """`livertumorai phantom -o DIR --count N --seed S [--size PX --slices N]` (synthetic test/demo cases)."""
    cmd = _engine(python) + ["phantom", "-o", str(outdir), "--count", str(count), "--seed", str(seed)]
    if size:
        cmd += ["--size", str(size)]
    if slices:
        cmd += ["--slices", str(slices)]
    return cmd


def export_command(
    result_dir: os.PathLike | str,
    outdir: os.PathLike | str,
    formats: Sequence[str],
    *,
    ct_dicom: Optional[os.PathLike | str] = None,
    coordinates: str = "LPS",
    overwrite: bool = False,
    python: Optional[str] = None,
) -> List[str]:
    """`livertumorai export RESULT_DIR -o OUT --formats a,b --coordinates C --progress json [--ct-dicom DIR]`."""
    cmd = _engine(python) + ["export", str(result_dir), "-o", str(outdir), "--formats", ",".join(formats),
                             "--coordinates", coordinates, "--progress", "json"]
    if ct_dicom:
        cmd += ["--ct-dicom", str(ct_dicom)]
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def device_probe_command(python: Optional[str] = None) -> List[str]:
    """A child that reports torch/CUDA/GPU as one JSON line on stdout.

    Why a child: importing torch inside Slicer's GUI process costs seconds and hundreds
    of MB, and a broken CUDA install can crash the importer. The panel only needs text.
    """
    return [python or sys.executable, "-c", "from LiverTumorAILib.runner import probe_devices_main; probe_devices_main()"]


def probe_devices() -> Dict[str, Any]:
    """What torch sees: version, CUDA availability/version, GPUs with memory. Never raises."""
    info: Dict[str, Any] = {"python": sys.version.split()[0], "torch": None, "cuda": False,
                            "cuda_version": None, "gpus": [], "mps": False}
    try:
        import torch  # noqa: PLC0415 - only in the probe child
    except Exception as exc:  # ImportError, or a broken binary
        info["error"] = f"PyTorch is not importable: {exc}"
        return info
    info["torch"] = str(torch.__version__)
    try:
        info["cuda"] = bool(torch.cuda.is_available())
        info["cuda_version"] = getattr(torch.version, "cuda", None)
        if info["cuda"]:
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                info["gpus"].append({"index": index, "name": props.name,
                                     "memory_gb": round(props.total_memory / 2**30, 1)})
        mps = getattr(getattr(torch, "backends", None), "mps", None)
        info["mps"] = bool(mps is not None and mps.is_available())
    except Exception as exc:
        info["error"] = f"CUDA query failed: {exc}"
    return info


def probe_devices_main() -> None:
    """Entry point of the probe child: print `probe_devices()` as one JSON line."""
    print(json.dumps(probe_devices()), flush=True)


def format_device_info(info: Optional[Mapping[str, Any]]) -> str:
    """One line for the panel, e.g. 'PyTorch 2.4.1, CUDA 12.1: NVIDIA RTX 4090 (24.0 GB)'."""
    if not info:
        return "Detecting devices..."
    if not info.get("torch"):
        return "PyTorch not installed (install it with the PyTorch extension)"
    text = f"PyTorch {info['torch']}"
    gpus = info.get("gpus") or []
    if info.get("cuda") and gpus:
        cuda = f", CUDA {info['cuda_version']}" if info.get("cuda_version") else ", CUDA"
        names = "; ".join(f"{g.get('name', 'GPU')} ({g.get('memory_gb', '?')} GB)" for g in gpus)
        text += f"{cuda}: {names}"
    elif info.get("mps"):
        text += ": Apple GPU (MPS); CUDA not available"
    else:
        text += ": CPU only (no CUDA GPU found)"
    return text


# --------------------------------------------------------------------------- runner
@dataclass
class RunResult:
    """What a finished run left behind, for the Logic to load or to show as an error."""

    returncode: Optional[int]
    cancelled: bool
    error: Optional[str]
    done: Optional[Event]
    stdout: str
    stderr_tail: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.cancelled and self.error is None


class ProcessRunner:
    """One background command: start, poll events, cancel the whole tree, read the result.

    Threads only read pipes and fill a queue; `poll()` is called from the GUI thread
    (Slicer's QTimer), so no Qt object is ever touched from a worker thread.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[os.PathLike | str] = None,
        grace_s: float = DEFAULT_GRACE_S,
        log_lines: int = 200,
    ) -> None:
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else engine_env()
        self.cwd = str(cwd) if cwd is not None else None
        self.grace_s = grace_s
        self._events: queue.Queue[Event] = queue.Queue()
        self._stderr_tail: Deque[str] = deque(maxlen=log_lines)
        self._stdout: List[str] = []
        self._error_event: Optional[str] = None
        self._done_event: Optional[Event] = None
        self._cli_error: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._threads: List[threading.Thread] = []
        self._cancelled = False
        self._started = 0.0
        self._ended: Optional[float] = None
        self._exit_reported = False
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ProcessRunner:
        """Start the process in its own process group/session so Cancel can kill the tree."""
        if self._proc is not None:
            raise RuntimeError("runner already started")
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True
        self._started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                **kwargs,
            )
        except OSError as exc:
            self._ended = time.monotonic()
            self._cli_error = f"could not start {self.command[0]}: {exc.strerror or exc}"
            self._events.put({"event": "error", "message": self._cli_error})
            self._events.put({"event": "exit", "returncode": None})
            self._exit_reported = True
            return self
        for name, stream, handler in (("stderr", self._proc.stderr, self._on_stderr),
                                      ("stdout", self._proc.stdout, self._on_stdout)):
            thread = threading.Thread(target=self._read, args=(stream, handler),
                                      name=f"livertumorai-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def finished(self) -> bool:
        """True once the process has exited and both pipes are drained."""
        if self._proc is None:
            return self._exit_reported
        return self._proc.poll() is not None and not any(t.is_alive() for t in self._threads)

    def poll(self) -> List[Event]:
        """Events since the last call, in order; the last one of a run is `{"event": "exit"}`."""
        events: List[Event] = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            if not self._exit_reported and self._proc is not None and self.finished:
                self._exit_reported = True
                self._ended = self._ended or time.monotonic()
                # The reader threads are done, so anything they queued is already in the queue.
                while True:
                    try:
                        events.append(self._events.get_nowait())
                    except queue.Empty:
                        break
                events.append({"event": "exit", "returncode": self._proc.returncode,
                               "cancelled": self._cancelled})
        return events

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Block until the process exits and the pipes are drained (tests, headless use)."""
        if self._proc is None:
            return None
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for thread in self._threads:
            thread.join(timeout=None if timeout is None else max(0.1, timeout))
        self._ended = self._ended or time.monotonic()
        return self._proc.returncode

    def cancel(self, grace_s: Optional[float] = None) -> None:
        """Stop the process and every process it started.

        Polite first (SIGTERM / CTRL_BREAK: the CLI turns it into RunCancelled and removes
        its staging folder), then after `grace_s` a hard kill of the whole group, whatever
        the leader did, so no orphaned worker keeps a GPU or a file busy.
        """
        if self._proc is None:
            return
        self._cancelled = True
        grace = self.grace_s if grace_s is None else grace_s
        if os.name == "nt":
            self._cancel_windows(grace)
        else:
            self._cancel_posix(grace)
        self.wait(timeout=5.0)

    def _cancel_posix(self, grace: float) -> None:
        assert self._proc is not None
        pgid = self._proc.pid  # start_new_session: the leader's pid is the group id
        for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                break  # the whole group is gone already
            try:
                self._proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                # The leader left; children that ignored SIGTERM still get the hard kill.
                time.sleep(min(0.2, grace))
                continue

    def _cancel_windows(self, grace: float) -> None:
        assert self._proc is not None
        try:
            self._proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            self._proc.wait(timeout=grace)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        # /T: the whole tree; /F: force. Runs even if the leader exited (kills orphans by tree).
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._proc.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    # -- result ----------------------------------------------------------------------
    def result(self) -> RunResult:
        """The run's outcome; call after `finished` (or `wait()`)."""
        rc = self._proc.returncode if self._proc is not None else None
        return RunResult(
            returncode=rc,
            cancelled=self._cancelled,
            error=None if self._cancelled else self._error_message(rc),
            done=self._done_event,
            stdout="".join(self._stdout),
            stderr_tail=list(self._stderr_tail),
            seconds=((self._ended or time.monotonic()) - self._started) if self._started else 0.0,
        )

    def _error_message(self, rc: Optional[int]) -> Optional[str]:
        if self._error_event:
            return self._error_event
        if self._cli_error:
            return self._cli_error
        if rc in (0, None):
            return None
        # A traceback's last line ("ValueError: ...") is the most readable one-liner.
        for line in reversed(self._stderr_tail):
            if line.strip():
                return line.strip()
        if rc is not None and rc < 0:
            try:
                return f"the engine was stopped by signal {signal.Signals(-rc).name}"
            except ValueError:
                pass
        return f"the engine exited with status {rc}"

    # -- reader threads --------------------------------------------------------------
    @staticmethod
    def _read(stream, handler) -> None:
        try:
            for line in iter(stream.readline, ""):
                handler(line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _on_stdout(self, line: str) -> None:
        self._stdout.append(line + "\n")

    def _on_stderr(self, line: str) -> None:
        event = parse_progress_line(line)
        if event is None:
            if not line.strip():
                return
            self._stderr_tail.append(line)
            prefix = "livertumorai: error:"
            if line.startswith(prefix):
                self._cli_error = line[len(prefix):].strip()
            self._events.put({"event": "log", "message": line})
            return
        kind = event.get("event")
        if kind == "error":
            self._error_event = str(event.get("message") or "unknown error")
        elif kind == "done":
            self._done_event = event
        self._events.put(event)


def run_to_completion(command: Sequence[str], timeout: Optional[float] = None, **kwargs: Any) -> RunResult:
    """Start, wait and return the result (headless callers and tests)."""
    runner = ProcessRunner(command, **kwargs).start()
    if runner.wait(timeout=timeout) is None and runner.running:
        runner.cancel()
    return runner.result()
