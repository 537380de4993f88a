"""Child processes for the CLI: start in their own process group, stream lines, kill the tree.

``ProcessRunner`` is the interface the workflow uses (SlicerNNUnet's Protocol + runner pattern):
:class:`BlockingRunner` here (tests, scripts), Qt-timer and ``launchConsoleProcess`` runners in the
module. No psutil: Slicer does not bundle it. The tree matters because PythonSlicer is a launcher
that starts the real interpreter as its child, so killing the launcher alone leaves the work running.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Protocol

LineCallback = Callable[[str], None]
DoneCallback = Callable[[int], None]


class ProcessRunner(Protocol):
    """Runs one command at a time; calls ``on_line`` per output line and ``on_done(return code)``."""

    def start(self, argv: list, env: dict, on_line: LineCallback, on_done: DoneCallback) -> None: ...

    def cancel(self) -> None: ...

    @property
    def running(self) -> bool: ...


def child_environment(updates: dict, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.update(updates)
    return env


def start_process_group(argv: list, env: dict, cwd: str | None = None) -> subprocess.Popen:
    """Popen with merged stdout/stderr (text, UTF-8, lines), as the leader of a new process group."""
    kwargs = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True  # setsid: the child leads a group its children inherit
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1,
                            **kwargs)


def _descendants_posix(pid: int) -> list:
    """Children, grandchildren ... of ``pid`` from ``ps`` (for a process that leads no group)."""
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True).stdout
    children = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_process_tree(pid: int) -> None:
    """Kill ``pid`` and everything it started. Quiet when it has already ended."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True)
        return
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    if leads_group:  # started by start_process_group: one signal reaches the whole group
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    # Started by someone else (slicer.util.launchConsoleProcess): walk the tree, leaves first.
    for p in reversed([pid] + _descendants_posix(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ProcessPump:
    """Reads a process's output on a thread; :meth:`poll` hands lines over on the caller's thread.

    The GUI calls ``poll`` from a timer, so callbacks run on the main thread (Qt and MRML are not
    thread-safe); :class:`BlockingRunner` calls it in a loop.
    """

    def __init__(self, proc: subprocess.Popen, on_line: LineCallback, on_done: DoneCallback):
        self.proc, self.on_line, self.on_done = proc, on_line, on_done
        self.finished = False
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(("line", line.rstrip("\r\n")))
        self.proc.stdout.close()
        self._queue.put(("done", self.proc.wait()))

    def poll(self) -> bool:
        """Deliver waiting lines (and the end); True once the process has ended and was reported."""
        while not self.finished:
            try:
                kind, data = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "line":
                self.on_line(data)
            else:
                self.finished = True
                self.on_done(int(data))
        return self.finished


class BlockingRunner:
    """Runs the command to the end inside ``start`` (tests, scripts, PythonSlicer)."""

    def __init__(self, poll_seconds: float = 0.05, cwd: str | None = None):
        self.poll_seconds, self.cwd = poll_seconds, cwd
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, argv: list, env: dict, on_line: LineCallback, on_done: DoneCallback) -> None:
        self.proc = start_process_group(argv, child_environment(env), self.cwd)
        pump = ProcessPump(self.proc, on_line, on_done)
        while not pump.poll():
            time.sleep(self.poll_seconds)

    def cancel(self) -> None:
        if self.running:
            kill_process_tree(self.proc.pid)


def python_executable() -> str:
    """The interpreter for the CLI child: PythonSlicer inside Slicer, else this interpreter."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable
