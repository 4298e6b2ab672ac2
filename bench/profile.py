"""Summarise py-spy raw profiles (``bench.throughput --profile``): samples by package.

    python -m bench.profile var/bench/throughput-<run>/profile-executor.txt [--top 20]

Each sample's leaf frame is charged to the package that owns it (``openai``, ``httpx2``,
``aiohttp``, ``pydantic_ai``, ``sqlalchemy``, ``celery``/``kombu``, Conduit's own modules,
the standard library), and idle samples (waiting in ``select``/``epoll``) are counted apart.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

IDLE = re.compile(
    r"\b(select|poll|epoll|_recv_into|recv|read|wait|sleep|accept|"
    r"_worker_process_loop)\b"
)


def owner(frame: str) -> str:
    """The package of a frame ``func (path/to/module.py:line)``; py-spy shortens the paths
    of installed packages to ``package/module.py`` and the standard library's to ``module.py``."""
    m = re.search(r"\((.*?):\d+\)$", frame)
    path = m.group(1) if m else frame
    if "site-packages/" in path:
        path = path.split("site-packages/")[1]
    if "_vendor/httpx_aiohttp" in path:
        return "openai (aiohttp transport)"
    if path.startswith(("conduit_workers/", "producers/")):
        return "conduit: " + path
    path = re.split(r"python3\.\d+/", path)[-1]
    head = path.split("/")[0].removesuffix(".py")
    if head.lstrip("_") in sys.stdlib_module_names or head.startswith("<"):
        return "stdlib: " + head
    return head


def summarise(path: Path, top: int) -> str:
    by_pkg: collections.Counter[str] = collections.Counter()
    idle = total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        if IDLE.search(leaf.split(" (")[0]):
            idle += n
            continue
        by_pkg[owner(leaf)] += n
    busy = total - idle
    out = [f"{path.name}: {total} samples, {busy} on CPU ({busy / max(total, 1):.0%}), {idle} idle"]
    for pkg, n in by_pkg.most_common(top):
        out.append(f"  {n / max(busy, 1):6.1%}  {pkg}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    for f in a.files:
        print(summarise(f, a.top))


if __name__ == "__main__":
    main()
