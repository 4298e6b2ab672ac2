"""Measurements of a worker process tree from ``/proc``: CPU time, time waiting for a CPU, RSS
per process, whether torch is loaded, and the seconds spent in tasks from a worker's log. Used by
``bench.throughput`` and ``bench.startup``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """The pid and its descendants (Celery prefork children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def cpu_s(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLK


def wait_s(pid: int) -> float:
    """Seconds the process tree spent runnable but waiting for a CPU (``/proc/PID/schedstat``):
    the share of a stage's time lost to other processes on the machine."""
    total = 0
    for p in _tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                total += int(Path(f"/proc/{p}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def rss_mb(pid: int) -> list[float]:
    out = []
    for p in _tree(pid):
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
            out.append(int(m.group(1)) / 1024 if m else 0.0)
        except OSError:
            pass
    return out


def torch_loaded(pid: int) -> bool:
    for p in _tree(pid):
        try:
            if "libtorch" in Path(f"/proc/{p}/maps").read_text():
                return True
        except OSError:
            pass
    return False


TASK_DONE = re.compile(
    r"Task (conduit\.\w+\.\w+)\[[^\]]+\] (?:succeeded|retry|raised).*? in "
    r"([0-9.]+)s"
)


def busy_from_log(path: Path, since_bytes: int) -> dict[str, tuple[int, float]]:
    """Tasks and seconds spent in them per task name, from the worker's log after an offset."""
    text = path.read_bytes()[since_bytes:].decode(errors="replace")
    out: dict[str, tuple[int, float]] = {}
    for name, secs in TASK_DONE.findall(text):
        n, s = out.get(name, (0, 0.0))
        out[name] = (n + 1, s + float(secs))
    return out
