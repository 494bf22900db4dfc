"""Where a contender's CPU time goes: py-spy samples of its process, grouped by library.

py-spy is not a dependency of adstream: install it anywhere (e.g. a scratch virtualenv outside
the repository, `pip install py-spy==0.4.2`; 0.4.3 cannot read the version of a Python built
with a shared libpython, as pyenv's are) and hand its path to the benchmark (`--profile`).
It samples every thread of the running process from outside, `--native` so that time spent in
C extensions (msgspec, lxml, rocksdict, aiohttp's parser) is seen as theirs; reading native
stacks pauses the process for each sample, so a profiled run is a little slower than a plain
one. Idle samples (a thread blocked in epoll or on a lock) are left out, so the samples
approximate CPU time.

`summarize` reads py-spy's raw (collapsed stack) output: one line per distinct stack,
`thread (TID): NAME;outermost frame;...;innermost frame COUNT`, each frame
`function (file:line)` or `function (file)` for native code.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 25
"""Samples per second per thread: each native sample stops the process for a moment, and at
100 Hz that cut adstream's throughput by half; at 25 Hz a minute still gives ~1,500 samples."""
TOP = 25

# What the samples of each thread and frame are charged to.
ADSTREAM_PACKAGES = frozenset({"streams", "models", "infra"})
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
INTERPRETER = "python (interpreter)"
"""Native frames of CPython itself (eval loop, allocator, GC) and of libc."""


class Frame(msgspec.Struct, frozen=True):
    function: str
    file: str

    @property
    def name(self) -> str:
        return f"{self.function} ({short_path(self.file)})"


def parse_frame(text: str) -> Frame:
    """`function (file:line)` or `function (file)`; the line number is dropped."""
    function, _, rest = text.rpartition(" (")
    if not function:
        return Frame(text, "")
    location = rest.removesuffix(")")
    file, _, line = location.rpartition(":")
    return Frame(function, file if file and line.isdigit() else location)


def short_path(file: str) -> str:
    """The path from the package root: `faust/streams.py`, `streams/worker/decide_stage.py`."""
    if "site-packages/" in file:
        return file.rsplit("site-packages/", 1)[1]
    path = Path(file)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO))
    with contextlib.suppress(ValueError):
        return str(path.relative_to(STDLIB))
    return path.name


def library(file: str) -> str | None:
    """The library a frame's code belongs to; None for CPython's own native code and libc."""
    if "site-packages/" in file:
        top = file.rsplit("site-packages/", 1)[1].split("/", 1)[0]
        # A bare extension module (`_foo.cpython-311-x86_64-linux-gnu.so`) names itself.
        return top.split(".", 1)[0].lstrip("_") or top
    path = Path(file)
    if path.suffix == ".c" and path.parent.name == "Modules":
        # A standard-library C module of CPython's source tree (`Modules/_asynciomodule.c`).
        return f"stdlib {path.stem.removesuffix('module').lstrip('_')}"
    if path.suffix == ".py" or (path.suffix == ".so" and "lib-dynload" in file):
        with contextlib.suppress(ValueError):
            first = path.relative_to(REPO).parts[0]
            return "adstream" if first in ADSTREAM_PACKAGES else first
        with contextlib.suppress(ValueError):
            relative = path.relative_to(STDLIB).parts
            if relative[0] == "lib-dynload":
                module = relative[-1].split(".", 1)[0].lstrip("_")
                return f"stdlib {module}"
            return f"stdlib {relative[0].removesuffix('.py')}"
        return path.stem
    return None


class Stack(msgspec.Struct, frozen=True):
    thread: str
    frames: tuple[Frame, ...]
    """Outermost first."""
    count: int


def parse(lines: Iterable[str]) -> list[Stack]:
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        parts = body.split(";")
        thread = parts[0].split(": ", 1)[-1] if parts[0].startswith("thread (") else ""
        frames = tuple(parse_frame(part) for part in parts[1 if thread else 0 :])
        stacks.append(Stack(thread, frames, int(count)))
    return stacks


def charged(frames: tuple[Frame, ...]) -> tuple[Frame, str]:
    """The innermost frame of known code, and its library: native CPython frames (the eval
    loop, the allocator) are charged to the Python code that ran them."""
    for frame in reversed(frames):
        found = library(frame.file)
        if found is not None:
            return frame, found
    return (frames[-1] if frames else Frame("?", "")), INTERPRETER


def loop_depth(frames: tuple[Frame, ...]) -> int:
    """How many outer frames are the event loop's own: up to asyncio's `Handle._run`, which
    runs each callback (a task step or a protocol callback); 0 outside an event loop."""
    inside = 0
    for i, frame in enumerate(frames):
        if frame.function == "_run" and frame.file.endswith("asyncio/events.py"):
            inside = i + 1
    return inside


def entry(frames: tuple[Frame, ...], depth: int = 1) -> str:
    """The callback the event loop was running, as `library: function` of its first `depth`
    frames outside asyncio (joined by " > ")."""
    inside = loop_depth(frames)
    if not inside:
        return "(outside the event loop)"
    path = [
        f"{found}: {frame.function}"
        for frame in frames[inside:]
        if (found := library(frame.file)) is not None and found != "stdlib asyncio"
    ]
    return " > ".join(path[:depth]) if path else "stdlib asyncio: (loop internals)"


def summarize(lines: Iterable[str], rate: int = SAMPLE_RATE, top: int = TOP) -> dict[str, Any]:
    """Self and cumulative samples by library and by function, and samples by thread and by
    event-loop callback; each as `[name, samples, share of all samples]`, largest first."""
    stacks = parse(lines)
    total = sum(stack.count for stack in stacks)
    self_lib: Counter[str] = Counter()
    cum_lib: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    cum_fn: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    for stack in stacks:
        frame, lib = charged(stack.frames)
        self_lib[lib] += stack.count
        self_fn[f"{lib}: {frame.name}"] += stack.count
        threads[stack.thread] += stack.count
        entries[entry(stack.frames)] += stack.count
        paths[entry(stack.frames, depth=4)] += stack.count
        known = [(f, library(f.file)) for f in stack.frames]
        for lib in {lib for _, lib in known if lib is not None}:
            cum_lib[lib] += stack.count
        # Below the event loop's own frames, which every sample of the loop's thread has.
        inner = [(f, lib) for f, lib in known[loop_depth(stack.frames) :] if lib is not None]
        for name in {f"{lib}: {f.name}" for f, lib in inner}:
            cum_fn[name] += stack.count

    def ranked(counter: Counter[str], n: int | None = None) -> list[list[Any]]:
        return [[name, count, count / total] for name, count in counter.most_common(n)]

    return {
        "samples": total,
        "rate": rate,
        "threads": ranked(threads),
        "self_by_library": ranked(self_lib),
        "cumulative_by_library": ranked(cum_lib),
        "by_loop_callback": ranked(entries, top),
        "by_loop_path": ranked(paths, top),
        "self_by_function": ranked(self_fn, top),
        "cumulative_by_function": ranked(cum_fn, top),
    }


def print_summary(name: str, summary: dict[str, Any], cpu_us_per_decision: float | None) -> None:
    """Shares of the samples, and each share of `cpu_us_per_decision` (measured, not sampled:
    a thread that is not idle may still wait for a CPU) when it is known."""
    per_decision = cpu_us_per_decision
    print(
        f"\n{name}: {summary['samples']} samples at {summary['rate']} Hz"
        + (f", shares of {per_decision:.0f} CPU us per decision" if per_decision else "")
    )
    for title, key, limit in (
        ("threads", "threads", 5),
        ("self time by library", "self_by_library", 16),
        ("cumulative time by library", "cumulative_by_library", 16),
        ("event-loop callbacks", "by_loop_callback", 12),
        ("event-loop callbacks, 4 frames deep", "by_loop_path", 20),
        ("self time by function", "self_by_function", 20),
        ("cumulative time by function", "cumulative_by_function", 20),
    ):
        print(f"  {title}:")
        for label, _count, share in summary[key][:limit]:
            us = f"{share * per_decision:>8.0f} us" if per_decision is not None else ""
            print(f"    {share:>6.1%}{us}  {label}")


class PySpy:
    """`py-spy record` attached to a running process until `stop()`."""

    def __init__(self, py_spy: Path, pid: int, output: Path, rate: int = SAMPLE_RATE) -> None:
        self.output = output
        self.rate = rate
        self.log = output.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(py_spy),
                    *("record", "--pid", str(pid), "--rate", str(rate)),
                    *("--threads", "--native", "--full-filenames"),
                    *("--format", "raw", "--output", str(output)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """Stop sampling (py-spy writes its output on SIGINT) and summarize the samples."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.output.exists():
            print(f"py-spy wrote no samples; see {self.log}", file=sys.stderr)
            return None
        with self.output.open() as raw:
            return summarize(raw, self.rate)
