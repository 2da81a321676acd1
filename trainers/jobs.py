"""Long jobs over many inputs (`dali-hf caption`, `pseudo-caption`, `evaluate`): their jsonl outputs, and their
split between the processes of `accelerate launch`.

- An output is checked before anything loads ([`check_output`], [`check_output_dir`]): an existing one is refused
  unless the job resumes (skips the inputs already written, appends the rest) or overwrites it.
- Lines are written whole: one write, flushed and synced per line. A line cut by a kill is cut off the file when
  the job resumes ([`read_jsonl`] with `repair`), so no torn line is ever left mid-file.
- One writer at a time: the main process holds an exclusive lock on `<output>.lock` for the whole job, so a second
  job writing the same output is refused at once. The kernel releases the lock when its process dies, so the lock
  file a killed job leaves behind never blocks. It is a POSIX record lock (`fcntl.lockf`), not `flock`: a `flock`
  is shared with the processes forked while it is held (the pipeline's data-loading workers), which outlive a killed
  job for a while and would keep its output locked.
- N processes ([`run_job`]): the inputs not yet written are split into contiguous shares, balanced by duration when
  it is known, else by count; each process writes its share to `<output>.part-<rank>-of-<N>`, and the main process
  merges the shares into the output in input order, so the file is the one a single process writes.
"""

import fcntl
import glob
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

__all__ = ["OutputError", "OutputLock", "check_output", "check_output_dir", "job_state", "read_jsonl", "run_job",
           "shard_paths", "split_by_weight"]


def job_state():
    """accelerate's `PartialState` of this process: the processes `accelerate launch` started, over gloo on CPU
    when the machine has no accelerator (as `TrainingArguments(use_cpu=True)` does), else one process."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.accelerator.is_available())


class OutputError(ValueError):
    """An output that a job may not write as asked: the message names it and the fix."""


def shard_paths(path: str) -> list[str]:
    """The share files that a run over several processes left beside `path` (`<path>.part-<rank>-of-<N>`)."""
    return sorted(glob.glob(glob.escape(path) + ".part-*-of-*"))


def _shard_path(path: str, rank: int, count: int) -> str:
    return path if count == 1 else f"{path}.part-{rank}-of-{count}"


def check_output(path: str, resume: bool = False, overwrite: bool = False, name: str = "--output",
                 locked: bool = True) -> None:
    """Refuse, before any model loads, an output file that cannot be written as asked: a folder, a file in a folder
    that does not exist, an existing output (or the shares of an interrupted run) without `resume` or `overwrite`,
    or (`locked`) an output another job is writing."""
    if resume and overwrite:
        raise OutputError("--resume and --overwrite exclude each other: --resume keeps the lines already written, "
                          "--overwrite starts again")
    if os.path.isdir(path):
        raise OutputError(f"{name} {path} is a folder: give the path of the json lines file to write, e.g. "
                          f"{os.path.join(path, 'captions.jsonl')}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"{name} {path}: the folder {parent} does not exist: create it, or write elsewhere")
    if not (resume or overwrite) and (os.path.exists(path) or shard_paths(path)):
        raise OutputError(f"{path} already exists: pass --resume to keep its lines and do only the inputs not in it, "
                          "or --overwrite to start again")
    if locked:
        OutputLock(path).check()


def check_output_dir(folder: str, files: Sequence[str], resume: bool = False, overwrite: bool = False,
                     name: str = "--output-dir") -> None:
    """[`check_output`] for a job writing `files` into `folder` (created if missing)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{name} {folder} is a file: give a folder (it is created if missing)")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise OutputError(f"{name} {folder}: the folder {parent} does not exist: create it, or write elsewhere")
    for file in files if os.path.isdir(folder) else []:
        check_output(os.path.join(folder, file), resume=resume, overwrite=overwrite, name=name)


_HELD: set[str] = set()  # lock files this process holds: a POSIX lock does not exclude its own process


class OutputLock:
    """An exclusive lock on `<path>.lock`, taken at once or refused with an [`OutputError`] naming the holder."""

    def __init__(self, path: str):
        self.target, self.path, self._fd = path, path + ".lock", None

    def _refuse(self, holder: str):
        return OutputError(f"{self.target} is being written by another process (pid {holder}; lock file "
                           f"{self.path}): wait for it to finish, or write to another file")

    def check(self) -> None:
        """Refuse at once if another job holds the lock (without taking it)."""
        if os.path.realpath(self.path) in _HELD:
            raise self._refuse(str(os.getpid()))
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise self._refuse(os.read(fd, 32).decode(errors="replace").strip() or "unknown") from None
        finally:
            os.close(fd)

    def acquire(self) -> "OutputLock":
        key = os.path.realpath(self.path)
        if key in _HELD:  # checked before opening: closing any descriptor of the file drops this process's lock
            raise self._refuse(str(os.getpid()))
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EAGAIN / EACCES: held by another process
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise self._refuse(holder) from None
            try:  # the lock file we hold must still be the one on disk (a finishing job removes its own)
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._key = fd, key
        _HELD.add(key)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.unlink(self.path)  # while still held: no other process can have taken this file's lock
        os.close(self._fd)  # closing releases the lock
        _HELD.discard(self._key)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_jsonl(path: str, repair: bool = False) -> list[dict]:
    """Rows of a jsonl file (none when it does not exist); a last line cut by a kill (no newline, or not JSON) is
    left out, and with `repair` cut off the file. Anything else that is not a json line is an [`OutputError`]: the
    file is not an output of these jobs, and nothing of it is cut."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    rows, good = [], 0
    lines = data.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except ValueError:  # json.JSONDecodeError is a ValueError
            if number < len(lines) or not line.startswith(b"{"):
                raise OutputError(f"{path} is not a json lines file written by this command (line {number} is not "
                                  "a json object): give another output, or --overwrite to replace it") from None
            break
        good += len(line)
    if repair and good < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good)
            os.fsync(handle.fileno())
    return rows


class JsonlAppender:
    """Appends json lines to a file, each in one write, synced to disk before the next."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, row: dict) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):  # a regular file takes it in one write; a full disk may not
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _write_atomically(path: str, rows: Iterable[dict]) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _merge(path: str, key: str, order: dict[str, int], remove_shards: bool = True) -> None:
    """Fold the shares left beside `path` into it, rows in input order, each key once (the first written wins)."""
    shards = shard_paths(path)
    rows = read_jsonl(path, repair=True)
    for shard in shards:
        rows += read_jsonl(shard, repair=True)
    unique = {}
    for row in rows:
        unique.setdefault(str(row[key]), row)
    ranked = sorted(unique.values(), key=lambda row: order.get(str(row[key]), len(order)))  # stable: unknown keys last
    if shards or len(ranked) != len(rows) or ranked != rows:
        _write_atomically(path, ranked)
    if remove_shards:
        for shard in shards:
            os.remove(shard)


def split_by_weight(weights: Sequence[float], parts: int) -> list[range]:
    """`parts` contiguous ranges of `range(len(weights))` whose weight sums are as even as contiguous ranges allow
    (part k ends where the running sum first reaches k / parts of the total)."""
    total = float(sum(weights))
    if total <= 0:
        weights, total = [1.0] * len(weights), float(len(weights))
    bounds, running, index = [0], 0.0, 0
    for part in range(1, parts):
        goal = total * part / parts
        while index < len(weights) and running + weights[index] / 2 <= goal:
            running += weights[index]
            index += 1
        bounds.append(index)
    bounds.append(len(weights))
    return [range(bounds[k], bounds[k + 1]) for k in range(parts)]


def run_job(keys: Sequence[str], paths: Sequence[str], produce: Callable[[list[int]], Iterator[tuple[int, dict]]],
            key: str, route: Callable[[dict], int] = lambda row: 0, resume: bool = False, overwrite: bool = False,
            weight: Callable[[int], float | None] | None = None, prepare: Callable[[], None] | None = None,
            progress: bool = True, description: str = "captioning", unit: str = "input") -> list[list[dict]]:
    """Run a job over the inputs named `keys` (unique, in input order) on every process of the current
    `accelerate` state (one when not launched), writing json lines to `paths`.

    `produce(indices)` yields `(index, row)` for each of those inputs, in order; `route(row)` says which of `paths`
    the row goes to; `row[key]` names its input. With `resume`, the inputs already in the outputs (or in the shares
    of an interrupted run over any number of processes) are skipped; with `overwrite`, the outputs are started
    again; without either an existing output is an [`OutputError`]. `weight(index)` is the input's duration when
    it can be read cheaply (None when not): shares are balanced by it. `prepare()` runs on the main process once
    it holds the outputs' locks, before any row is written (e.g. to record the job's settings). A tqdm bar with
    rate and ETA on the main process follows its share (`progress=False`: none). Returns the rows of each output,
    on every process."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = job_state()
    for path in paths:  # the lock is taken below, by the main process, while the others may still be here
        check_output(path, resume=resume, overwrite=overwrite, name="output", locked=False)
    order = {str(name): index for index, name in enumerate(keys)}
    if len(order) != len(keys):
        raise ValueError("the inputs of a job must be named uniquely: some names appear twice")
    state.wait_for_everyone()  # every process has checked the outputs (in the command too) before any is locked
    locks = [OutputLock(path).acquire() for path in paths] if state.is_main_process else []
    try:
        if state.is_main_process:
            for path in paths:
                if overwrite:
                    for stale in [path, *shard_paths(path)]:
                        if os.path.exists(stale):
                            os.remove(stale)
                else:
                    _merge(path, key, order)
            if prepare is not None:
                prepare()
        state.wait_for_everyone()
        done = {str(row[key]) for path in paths for row in read_jsonl(path)}
        pending = [index for index, name in enumerate(keys) if str(name) not in done]
        mine = pending
        if state.num_processes > 1:
            weights = [1.0] * len(pending)
            if weight is not None:  # each process reads the durations of a slice, all of them see every slice
                with state.split_between_processes(pending) as slice_:
                    durations = gather_object([weight(index) for index in slice_])
                known = [d for d in durations if d is not None and d > 0]
                fallback = sum(known) / len(known) if known else 1.0
                weights = [d if d is not None and d > 0 else fallback for d in durations]
            share = split_by_weight(weights, state.num_processes)[state.process_index]
            mine = [pending[i] for i in share]
        writers = [JsonlAppender(_shard_path(path, state.process_index, state.num_processes)) for path in paths]
        shown = progress and state.is_main_process
        label = description if state.num_processes == 1 else f"{description} (share of process 0 of " \
                                                                f"{state.num_processes})"
        try:
            with tqdm(total=len(mine), disable=not shown, desc=label, unit=unit, dynamic_ncols=True) as bar:
                for _, row in produce(mine):
                    writers[route(row)].write(row)
                    bar.update(1)
        finally:
            for writer in writers:
                writer.close()
        state.wait_for_everyone()
        if state.is_main_process:
            for path in paths:
                _merge(path, key, order)
                if not os.path.exists(path):
                    open(path, "a").close()  # an output with no row is still written
    finally:
        for lock in locks:
            lock.release()
    state.wait_for_everyone()
    return [read_jsonl(path) for path in paths]
