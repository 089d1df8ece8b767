"""The training pairs as Petastorm sees them: written once by the driver, streamed by every rank.

Only the (customer_idx, article_idx) pairs travel through Petastorm; the
features are looked up in memory by each training process. The pairs are
written pre-shuffled, each rank reads its shard of row groups in a seeded
order, and :func:`read_ahead` can move the reading onto a background thread.
"""
from __future__ import annotations

import math
import queue
import threading
import warnings
from typing import Any, Iterable, Iterator



def quiet_petastorm() -> None:
    """Filter the warnings petastorm causes on every use, none of which a user can act on.

    petastorm 0.13.1 calls pyarrow APIs deprecated since pyarrow 5-11 that the
    pinned pyarrow 14 still has (a FutureWarning on each call), and its torch
    loader turns read-only numpy batches into tensors, which torch warns about
    although nothing here writes to a batch. Installed before petastorm is
    imported (its import already warns) and again by each function that uses
    it, as a caller's ``warnings.catch_warnings`` may have dropped the filters
    since. Idempotent: an identical filter replaces the earlier one.
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning,
                            module=r"petastorm\.pytorch")


quiet_petastorm()

import pyarrow.parquet as pq  # noqa: E402  (after the warning filters above)
from petastorm.fs_utils import get_filesystem_and_path_or_paths  # noqa: E402
from petastorm.pytorch import BatchedDataLoader  # noqa: E402
from petastorm.spark import make_spark_converter  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from hmrec.config import Config, TrainConfig  # noqa: E402
from hmrec.errors import HmrecError  # noqa: E402
from hmrec.lake import tables  # noqa: E402
from hmrec.model.two_tower import ITEM_ID, USER_ID  # noqa: E402

PETASTORM_CACHE_CONF = "petastorm.spark.converter.parentCacheDirUrl"
# Pair files of ~2M rows in row groups of ~0.5M rows (8 bytes a row): enough
# row groups to shard over processes and to shuffle their order every epoch.
ROWS_PER_FILE = 2_000_000
ROW_GROUP_BYTES = 4 * 1024 * 1024
# Batches the loader thread may read ahead of the trainer.
READ_AHEAD_BATCHES = 8


def _petastorm_cache_url(cfg: Config) -> str:
    root = f"{cfg.lakehouse}/_petastorm"
    return root if "://" in root else f"file://{root}"


def materialise_pairs(spark: Any, cfg: Config, rows: Any, n_rows: int, world_size: int) -> Any:
    """Write the (customer_idx, article_idx) pairs for Petastorm; returns the converter.

    The pairs are spread over files by a seeded hash of each row and sorted by
    it inside each file, so the files are pre-shuffled and identical on every
    run with the same seed and data. Call ``converter.delete()`` when done.
    """
    spark.conf.set(PETASTORM_CACHE_CONF, _petastorm_cache_url(cfg))
    n_files = max(4 * world_size, math.ceil(n_rows / ROWS_PER_FILE))
    n_files = max(1, min(n_files, n_rows))
    key = F.xxhash64(USER_ID, ITEM_ID, "t_dat", "price", "sales_channel_id", F.lit(cfg.train.seed))
    pairs = (
        rows.select(F.col(USER_ID).cast("int"), F.col(ITEM_ID).cast("int"), key.alias("_k"))
        .repartition(n_files, "_k")
        .sortWithinPartitions("_k", USER_ID, ITEM_ID)
        .select(USER_ID, ITEM_ID)
    )
    quiet_petastorm()
    converter = make_spark_converter(pairs, parquet_row_group_size_bytes=ROW_GROUP_BYTES)
    # Spark lists the files in no promised order; a fixed order keeps the seeded shuffle reproducible.
    converter.file_urls = sorted(converter.file_urls)
    n_groups = _row_group_count(converter.file_urls)
    if n_groups < world_size:
        converter.delete()
        raise HmrecError(
            f"{tables.TRAIN} for this as-of has {n_rows} rows in {n_groups} row groups, too few to shard over "
            f"train.num_processes={world_size}; lower train.num_processes"
        )
    return converter


def _row_group_count(file_urls: list[str]) -> int:
    fs, paths = get_filesystem_and_path_or_paths(file_urls)
    total = 0
    for path in paths:
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).num_row_groups
    return total


def open_loader(converter: Any, tc: TrainConfig, rank: int, world_size: int, seed: int) -> Any:
    """Petastorm's batched loader over this rank's shard, shuffled reproducibly from ``seed``.

    Row groups are read in a seeded order and rows shuffled within each row
    group. The reader runs on Petastorm's 'dummy' pool (row groups read in the
    calling thread): petastorm 0.13.1's thread pool can report the end of the
    data before its ventilator has handed out the last row groups, which
    silently drops part (sometimes all) of an epoch. :func:`read_ahead` puts
    the reading on a background thread instead.
    """
    quiet_petastorm()
    kwargs: dict[str, Any] = {}
    if world_size > 1:
        kwargs.update(cur_shard=rank, shard_count=world_size)
    return converter.make_torch_dataloader(
        batch_size=tc.batch_size,
        num_epochs=1,
        shuffling_queue_capacity=0,
        data_loader_fn=BatchedDataLoader,
        reader_pool_type="dummy",
        seed=seed,
        shuffle_rows=True,
        shuffle_row_groups=True,
        **kwargs,
    )


class _Failure:
    """An exception raised by the read-ahead thread, handed to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def read_ahead(batches: Iterable, threads: int) -> Iterator:
    """Iterate ``batches``, read up to READ_AHEAD_BATCHES ahead on a background thread when ``threads`` is 1.

    The order is unchanged (one producer). Close the returned generator
    before closing the source, so the thread has stopped reading first.
    """
    if threads <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=READ_AHEAD_BATCHES)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="hmrec-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
