"""Progress reporting for long runs: a human progress bar, JSON lines for Slicer, or nothing.

JSON protocol (one object per line on stderr, see CONTRIBUTING.md):
  {"event": "progress", "stage": "segment", "fraction": 0.42, "message": "..."}
  {"event": "warning", "message": "..."}   {"event": "info", "message": "..."}
  {"event": "done", "outdir": "..."}        {"event": "error", "message": "..."}
`fraction` is the fraction of the whole run (0..1), not of the stage.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Dict, Optional, Union

MODES = ("bar", "json", "none")
EVENTS = ("progress", "warning", "info", "done", "error")
_BAR_WIDTH = 24


class Progress:
    """Reports stages of a run. Safe to call from the engine whatever the mode."""

    def __init__(self, mode: str = "bar", stream: Optional[IO[str]] = None) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        try:
            self._tty = bool(self.stream.isatty())
        except (AttributeError, OSError, ValueError):
            self._tty = False
        self._bar_open = False
        self._last_plain: tuple = ("", -1)
        self._last_bar = 0.0
        self._finished = False
        self.stage_name = ""
        self.fraction = 0.0

    # ------------------------------------------------------------------ public API
    def stage(self, name: str, fraction: float, message: str = "") -> None:
        """Now in stage `name`, `fraction` (0..1) of the whole run done."""
        try:
            fraction = min(1.0, max(0.0, float(fraction)))
        except (TypeError, ValueError):
            fraction = 0.0
        self.stage_name, self.fraction = name, fraction
        if self.mode == "json":
            self._json({"event": "progress", "stage": name, "fraction": round(fraction, 4), "message": message})
        elif self.mode == "bar":
            self._bar(name, fraction, message)

    def info(self, message: str) -> None:
        if self.mode == "json":
            self._json({"event": "info", "message": message})
        elif self.mode == "bar":
            self._line(message)

    def warn(self, message: str) -> None:
        if self.mode == "json":
            self._json({"event": "warning", "message": message})
        else:  # warnings matter even with --progress none
            self._line(f"warning: {message}")

    def done(self, outdir: Any) -> None:
        """The run finished and its results are in `outdir` (reported once)."""
        if self._finished:
            return
        self._finished = True
        if self.mode == "json":
            self._json({"event": "done", "outdir": str(outdir)})
        elif self.mode == "bar":
            if self._tty:
                self._bar("done", 1.0, "", force=True)
            self._line(f"done: results in {outdir}")

    def error(self, message: str) -> None:
        """Report a failure (JSON mode only; the CLI prints the one-line error itself)."""
        if self._finished:
            return
        self._finished = True
        if self.mode == "json":
            self._json({"event": "error", "message": message})
        else:
            self._close_bar()

    # ------------------------------------------------------------------ output
    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # closed pipe (e.g. Slicer went away): never fail the run
            pass

    def _json(self, obj: Dict[str, Any]) -> None:
        self._write(json.dumps(obj, ensure_ascii=False) + "\n")

    def _close_bar(self) -> None:
        if self._bar_open:
            self._write("\n")
            self._bar_open = False

    def _line(self, text: str) -> None:
        self._close_bar()
        self._write(f"livertumorai: {text}\n")

    def _bar(self, name: str, fraction: float, message: str, force: bool = False) -> None:
        if self._tty:
            now = time.monotonic()
            if not force and now - self._last_bar < 0.1 and fraction < 1.0:
                return  # at most 10 redraws a second
            self._last_bar = now
            filled = int(round(fraction * _BAR_WIDTH))
            text = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {fraction * 100:3.0f}% {name}"
            if message:
                text += f": {message}"
            self._write("\r" + text[:100].ljust(100))
            self._bar_open = True
        else:  # logs/pipes: one plain line per stage and per 10%
            key = (name, int(fraction * 10))
            if key == self._last_plain:
                return
            self._last_plain = key
            self._write(f"livertumorai: {fraction * 100:3.0f}% {name}" + (f": {message}" if message else "") + "\n")


def as_progress(progress: Union[Progress, str, None]) -> Progress:
    """Accept a Progress, a mode name, or None (= silent) wherever the engine takes `progress`."""
    if isinstance(progress, Progress):
        return progress
    return Progress(progress or "none")


def parse_progress_line(line: Union[str, bytes]) -> Optional[Dict[str, Any]]:
    """One stderr line -> the event dict, or None if it is not a protocol line (plain text)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("event") not in EVENTS:
        return None
    if obj["event"] == "progress":
        try:
            obj["fraction"] = min(1.0, max(0.0, float(obj.get("fraction", 0.0))))
        except (TypeError, ValueError):
            obj["fraction"] = 0.0
        obj.setdefault("stage", "")
        obj.setdefault("message", "")
    return obj
