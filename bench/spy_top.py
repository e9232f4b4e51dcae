"""Where the gateway's CPU goes, from a py-spy raw profile (``bench/cost.py --profile``).

Samples whose innermost frames wait (epoll, a lock, a queue, the GIL) are removed, so the
percentages are of on-CPU samples. Each sample is put in one part of the data path: the garbage
collector or SQLite's fsync wherever they appear in the stack, otherwise the innermost frame
that names a part. Then the innermost functions, and inclusive shares of ours.

    python bench/spy_top.py /tmp/profile.template.txt
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

_WAITING = re.compile(
    r"epoll_wait|pthread_cond_timedwait|PyThread_acquire_lock_timed|_queue_SimpleQueue_get|"
    r"take_gil|select_epoll_poll_impl"
)
#: Anywhere in the stack: these win.
_ANYWHERE = [
    ("garbage collector", re.compile(r"gc_collect|collect_main|collect_generation")),
    ("fsync (SQLite commit)", re.compile(r"fsync|fdatasync|unixSync")),
]
#: The innermost match wins.
_PARTS = [
    ("SQLite append (append_many)", re.compile(r"append_many")),
    ("SQLite read back (oldest)", re.compile(r"ReadingStore\.oldest|_row_to_buffered")),
    ("SQLite delete", re.compile(r"ReadingStore\.delete")),
    ("JSON payload (dialect)", re.compile(r"json_dialect")),
    ("paho / MQTT session", re.compile(r"paho|upstream/session\.py")),
    (
        "decode + reading construction",
        re.compile(r"decode\.py|reading_from_values|_decode_block|readings\.py"),
    ),
    ("Modbus request/framing", re.compile(r"modbus/link\.py|modbus/pdu\.py|modbus/bus\.py")),
    (
        "thread hops (executor, futures)",
        re.compile(r"run_in_executor|concurrent/futures|_write_to_self|call_soon_threadsafe"),
    ),
    ("buffer (event loop side)", re.compile(r"gateway/buffer\.py")),
    ("forwarder", re.compile(r"forwarder\.py")),
    ("scheduler, sink, health", re.compile(r"scheduler\.py|sink\.py|health\.py|clock\.py")),
    ("event loop (asyncio)", re.compile(r"asyncio|selectors|_asynciomodule")),
]


def part_of(frames: list[str]) -> str:
    for name, pattern in _ANYWHERE:
        if any(pattern.search(frame) for frame in frames):
            return name
    for frame in reversed(frames):
        for name, pattern in _PARTS:
            if pattern.search(frame):
                return name
    return "other"


def main(path: Path, top: int = 20) -> None:
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        if _WAITING.search(";".join(frames[-4:])):
            waiting += samples
            continue
        total += samples
        parts[part_of(frames)] += samples
        leaves[frames[-1]] += samples
        for function in {re.sub(r":\d+\)", ")", frame) for frame in frames}:
            inclusive[function] += samples
    print(f"{path}: {total} on-CPU samples ({waiting} waiting left out)")
    for name, samples in parts.most_common():
        print(f"{100 * samples / total:5.1f}%  {name}")
    print("innermost functions:")
    for name, samples in leaves.most_common(top):
        print(f"{100 * samples / total:5.1f}%  {name}")
    print("inclusive, ours:")
    for name, samples in inclusive.most_common():
        if re.search(r"\((gateway|drivers)/", name) and samples * 50 >= total:
            print(f"{100 * samples / total:5.1f}%  {name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(arg) for arg in sys.argv[2:3]))
