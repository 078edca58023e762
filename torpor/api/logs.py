"""``GET /api/v1/functions/{name}/logs``: instance and template logs, as they are or followed.

Each instance writes ``{id}.stdout.log`` and ``{id}.stderr.log`` under ``DATA_DIR/logs/{function}/``
and each revision's template ``template-{revision}.*.log`` beside them. The answer is NDJSON, one
``{"source", "stream", "line"}`` object a line: first the last ``tail`` lines of every source
(oldest source first), then, with ``follow``, every new line as it is written, including those of
instances that start meanwhile, until the client goes away. ``since`` keeps only the sources written
to since then (log lines carry no time of their own).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from torpor.errors import NotFound
from torpor.spec import is_function_name

FOLLOW_POLL_S = 0.2
MAX_TAIL_LINES = 10_000
_TAIL_READ_BYTES = 1 << 20  # a tail reads at most the last MiB of a file
_STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class LogFile:
    source: str  # the instance id, or template-{revision}
    stream: str  # stdout or stderr
    path: Path


def log_dir(data_dir: Path, function: str) -> Path:
    """Where a function's logs are; a name no function can have (too long for a file name, a '..')
    is not found, never looked up on disk."""
    if not is_function_name(function):
        raise NotFound(f"function {function!r} not found")
    return data_dir / "logs" / function


def log_files(folder: Path, instance: str | None = None, since: float | None = None) -> list[LogFile]:
    """The function's log files, oldest first (by modification time)."""
    found = []
    for path in folder.glob("*.log") if folder.is_dir() else ():
        for stream in _STREAMS:
            suffix = f".{stream}.log"
            if path.name.endswith(suffix):
                source = path.name.removesuffix(suffix)
                if instance is not None and source != instance:
                    continue
                if since is not None and path.stat().st_mtime < since:
                    continue
                found.append(LogFile(source, stream, path))
    return sorted(found, key=lambda f: (f.path.stat().st_mtime, f.source, f.stream))


def tail_lines(path: Path, lines: int) -> tuple[list[str], int]:
    """The last ``lines`` lines of ``path`` and the offset just past them (where following starts)."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        start = max(0, size - _TAIL_READ_BYTES)
        handle.seek(start)
        data = handle.read(size - start)
    newline = data.rfind(b"\n")  # a line still being written waits for its newline
    if newline < 0:
        return [], start
    picked = data[:newline].decode(errors="replace").split("\n")[-lines:] if lines > 0 else []
    return picked, start + newline + 1


def _record(file: LogFile, line: str) -> bytes:
    return (json.dumps({"source": file.source, "stream": file.stream, "line": line}) + "\n").encode()


def snapshot(folder: Path, instance: str | None, since: float | None, tail: int,
             offsets: dict[Path, int]) -> Iterator[bytes]:
    """The last ``tail`` lines of each source; ``offsets`` learns where each file was read up to."""
    for file in log_files(folder, instance, since):
        lines, offsets[file.path] = tail_lines(file.path, min(tail, MAX_TAIL_LINES))
        for line in lines:
            yield _record(file, line)


async def follow(folder: Path, instance: str | None, offsets: dict[Path, int],
                 poll_s: float = FOLLOW_POLL_S) -> AsyncIterator[bytes]:
    """New complete lines of every file (new files from their start), forever."""
    while True:
        chunks: list[bytes] = []
        for file in log_files(folder, instance):
            offset = offsets.get(file.path, 0)
            try:
                size = file.path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offset:  # truncated or replaced: start over
                offset = 0
            if size == offset:
                offsets[file.path] = offset
                continue
            with open(file.path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(size - offset)
            complete = data.rpartition(b"\n")[0]
            if not complete:
                offsets[file.path] = offset
                continue
            offsets[file.path] = offset + len(complete) + 1
            chunks.extend(_record(file, line) for line in complete.decode(errors="replace").split("\n"))
        if chunks:
            yield b"".join(chunks)
        await asyncio.sleep(poll_s)
