"""Alignment data at scale: a deterministic stream of (audio, image) batches for one process of a (multi-process)
run, decoded in parallel, resumable in the middle of an epoch without reading what it skips."""

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import torch
from transformers.utils import logging

from .collators import AlignmentCollator

__all__ = ["AlignmentStream", "StreamLoader"]

logger = logging.get_logger(__name__)


class AlignmentStream(torch.utils.data.IterableDataset):
    """The (audio, image) rows of `source` as this process's training batches.

    Order: a `datasets.Dataset` is permuted with (seed, epoch); a `datasets.IterableDataset` (`streaming=True`, or
    `to_iterable_dataset(num_shards=...)`) is read in its own order after `set_epoch(epoch)`, so shuffle it first
    (`.shuffle(seed=..., buffer_size=...)`). Global batch k is rows [kG, (k+1)G) of that order, G = batch size x
    processes, and process r takes rows [kG + rb, kG + (r+1)b): any number of processes trains on the same global
    batches as one. A last, incomplete global batch is dropped (every process must step together).

    Every process reads the row stream undecoded (cheap) and decodes only its own rows, `decode_workers` threads at
    a time and `prefetch` batches ahead (audio and image decoding release the GIL). Rows that cannot be decoded are
    skipped, named in a warning and kept in `skipped`. Rows may also hold `image_tokens` (cached CLIP targets, see
    `cache_image_tokens`) instead of an image.

    Resume: `resume(epoch, batches)` makes the next pass over `epoch` start with `batches` empty placeholders, which
    is what the Trainer discards when it fast-forwards to a checkpoint's step, so skipped rows are never decoded.
    The trainer calls `configure` and `resume`; users only build the stream (or pass a `datasets.IterableDataset`).
    """

    def __init__(self, source, processor, seed: int = 0, decode_workers: int = 4, prefetch: int = 2,
                 num_rows: int | None = None):
        self.source = _undecoded(source)
        self.collator = AlignmentCollator(processor)
        self.seed, self.decode_workers, self.prefetch = seed, max(1, decode_workers), max(1, prefetch)
        self._map_style = not isinstance(source, torch.utils.data.IterableDataset) and hasattr(source, "__len__")
        self.num_rows = num_rows if num_rows is not None else (len(source) if self._map_style else _known_rows(source))
        self.batch_size, self.num_processes, self.process_index = 1, 1, 0
        self.epoch, self._resume = 0, {}
        self.skipped: list[str] = []

    def configure(self, batch_size: int, num_processes: int = 1, process_index: int = 0) -> "AlignmentStream":
        self.batch_size, self.num_processes, self.process_index = batch_size, num_processes, process_index
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """The next pass over `epoch` yields `batches` placeholders before real batches: nothing is decoded for them
        (a map-style source is not even read; an iterable one is read undecoded, as it must be to move on)."""
        self._resume = {epoch: batches}

    def __len__(self) -> int:
        if self.num_rows is None:
            raise TypeError("the stream's length is unknown: pass num_rows=, or set max_steps")
        return self.num_rows // (self.batch_size * self.num_processes)

    def __iter__(self):
        epoch = self.epoch
        placeholders = self._resume.pop(epoch, 0)
        first = self.process_index * self.batch_size
        batches = self._global_batches(epoch)
        if self.num_rows is not None:
            batches = islice(batches, len(self))
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="dali-decode") as pool:
            pending = deque()
            for index, batch in enumerate(batches):
                if index < placeholders:
                    yield {}
                    continue
                pending.append([pool.submit(self._decode, row) for row in batch[first:first + self.batch_size]])
                if len(pending) > self.prefetch:
                    yield self._stack(pending.popleft())
            while pending:
                yield self._stack(pending.popleft())

    def _global_batches(self, epoch):
        """This epoch's global batches: positions into a map-style source (read only for this process's rows, in
        the decoding threads), undecoded rows of an iterable one."""
        total = self.batch_size * self.num_processes
        if self._map_style:
            order = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(self.seed + epoch))
            for start in range(0, len(order) - total + 1, total):
                yield order[start:start + total].tolist()
            return
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)
        rows = iter(self.source)
        while len(batch := list(islice(rows, total))) == total:
            yield batch

    def _decode(self, row):
        if self._map_style:
            row = self.source[row]
        name = row.get("id", "?")
        try:
            features = self.collator([row])
        except (ValueError, OSError, RuntimeError) as error:
            logger.warning("skipping clip %r: %s", name, error)
            self.skipped.append(str(name))
            return None
        return {key: value[0] for key, value in features.items()}

    def _stack(self, futures) -> dict[str, torch.Tensor]:
        rows = [row for row in (future.result() for future in futures) if row is not None]
        if not rows:
            raise ValueError(f"no clip of a batch could be decoded (latest skipped: {self.skipped[-3:]}): check the "
                             "data source")
        return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def _known_rows(source) -> int | None:
    """A streamed split's size when its metadata records it (Hub datasets usually do)."""
    info = getattr(source, "info", None)
    split = getattr(source, "split", None)
    if info is None or split is None or not info.splits or str(split) not in info.splits:
        return None
    return info.splits[str(split)].num_examples or None


def _undecoded(source):
    """`source` with its Audio / Image columns left as bytes or paths: decoding happens only for this process's
    rows, in the stream's threads."""
    import datasets

    if isinstance(source, datasets.IterableDataset):
        return source.decode(False)
    if isinstance(source, datasets.Dataset):
        for name, feature in source.features.items():
            if isinstance(feature, (datasets.Audio, datasets.Image)) and feature.decode:
                source = source.cast_column(name, type(feature)(decode=False))
        return source
    return source


class StreamLoader(torch.utils.data.DataLoader):
    """The Trainer's dataloader for an `AlignmentStream`: batches come from the stream as they are (it splits the
    data between processes itself), and the epoch reaches it."""

    def __init__(self, stream: AlignmentStream):
        super().__init__(stream, batch_size=None, num_workers=0, collate_fn=_identity)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def _identity(batch):
    return batch
