"""Writing the generated data: CSV encoding, the three Kaggle files and planted/.

Every file is written as ``<name>.tmp``; :func:`hmrec.synth.generate.generate`
renames them only when all are complete. The customer and transaction files
are encoded in numpy (fixed-width byte tables, padding squeezed out) because
they are most of the bytes; articles.csv goes through :mod:`csv` for its
quoting. (This module is not called ``csv.py``: inside it, ``import csv``
would read as importing itself.)
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from hmrec.config import GenerateConfig
from hmrec.lake.schemas import ARTICLE_COLUMNS, CUSTOMER_COLUMNS, TRANSACTION_COLUMNS
from hmrec.progress import log, verbose
from hmrec.synth.params import CLUSTER_WEIGHTS, PROFILE_SETTINGS, PROFILES, Params, record, segments_json_params
from hmrec.synth.simulate import Chunk
from hmrec.synth.vocab import DISCOUNTS, PRICE_DIVISOR
from hmrec.synth.world import CLUSTERS, SEGMENTS, Catalogue, Customers

STAGE = "generate"
OUTPUT_FILES = ("articles.csv", "customers.csv", "transactions_train.csv", "planted/customer_segments.csv",
                "planted/article_clusters.csv", "planted/segments.json", "planted/profile.json")


# ---- encoding ------------------------------------------------------------------


def _table(strings: list[bytes] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings -> (k, width) uint8 table padded with zeros, and their lengths."""
    arr = np.asarray(strings, dtype=np.bytes_)
    width = max(arr.dtype.itemsize, 1)
    arr = arr.astype(f"S{width}")
    return arr.view(np.uint8).reshape(len(arr), width), np.char.str_len(arr).astype(np.int64)


def _encode(fields: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> bytes:
    """Concatenate per-row fields into CSV bytes.

    Each field is ``(table, lengths, index)``: row i gets ``table[index[i]]``
    cut to its length (``index`` None means row i of the table). Separators
    are part of the table entries. Rows are laid out at fixed offsets and the
    padding is squeezed out with one boolean mask, which keeps it all in numpy.
    """
    n = len(fields[0][2]) if fields[0][2] is not None else len(fields[0][0])
    widths = [t.shape[1] for t, _, _ in fields]
    buf = np.empty((n, sum(widths)), dtype=np.uint8)
    mask = np.empty(buf.shape, dtype=bool)
    off = 0
    for (table, lens, index), w in zip(fields, widths):
        buf[:, off:off + w] = table if index is None else table[index]
        if (lens == w).all():
            mask[:, off:off + w] = True
        else:
            row_lens = lens if index is None else lens[index]
            mask[:, off:off + w] = np.arange(w)[None, :] < row_lens[:, None]
        off += w
    return buf[mask].tobytes()


def _with_sep(hex_ids: np.ndarray, sep: bytes) -> tuple[np.ndarray, np.ndarray]:
    table = np.empty((hex_ids.shape[0], hex_ids.shape[1] + 1), dtype=np.uint8)
    table[:, :-1] = hex_ids
    table[:, -1] = ord(sep)
    return table, np.full(len(table), table.shape[1], dtype=np.int64)


def tmp_path(path: Path) -> Path:
    """Where ``path`` is written until every output file is complete."""
    return path.with_name(path.name + ".tmp")


def _header(columns: list[tuple[str, object]]) -> bytes:
    return (",".join(name for name, _ in columns) + "\n").encode()


# ---- the Kaggle files ------------------------------------------------------------


def write_articles(path: Path, rows: list[list], file_order: np.ndarray) -> Path:
    """articles.csv from the catalogue's rows, in ``file_order`` (article_id order); returns the .tmp path."""
    tmp = tmp_path(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([name for name, _ in ARTICLE_COLUMNS])
        writer.writerows(rows[int(i)] for i in file_order)
    log(STAGE, f"articles.csv: {len(rows)} rows")
    return tmp


def write_customers(path: Path, cust: Customers, chunk_rows: int) -> Path:
    """customers.csv, ``chunk_rows`` rows encoded at a time; returns the .tmp path."""
    ages = [b","] + [f"{a},".encode() for a in range(1, 100)]
    flag = _table([b",", b"1.0,"])
    fields = [
        (*_with_sep(cust.hex_id, b","), None),
        (*flag, cust.fn.astype(np.int64)),
        (*flag, cust.active.astype(np.int64)),
        (*_table([b",", b"ACTIVE,", b"PRE-CREATE,", b"LEFT CLUB,"]), cust.club.astype(np.int64)),
        (*_table([b",", b"NONE,", b"Regularly,", b"Monthly,"]), cust.news.astype(np.int64)),
        (*_table(ages), cust.age.astype(np.int64)),
        (*_with_sep(cust.postal_hex, b"\n"), cust.postal),
    ]
    tmp = tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(_header(CUSTOMER_COLUMNS))
        step = chunk_rows
        for a in range(0, len(cust.segment), step):
            part = [(t, l, (np.arange(a, min(a + step, len(cust.segment))) if i is None else i[a:a + step]))
                    for t, l, i in fields]
            f.write(_encode(part))
    log(STAGE, f"customers.csv: {len(cust.segment)} rows")
    return tmp


# Seconds between two progress lines of the transaction writer (every month at --verbose).
PROGRESS_EVERY_S = 10.0


def write_transactions(path: Path, months: Iterable[Chunk], cat: Catalogue, customer_hex: np.ndarray,
                       start: dt.date, n_days: int, chunk_rows: int) -> tuple[Path, int]:
    """transactions_train.csv from the simulated months; returns the .tmp path and the rows written.

    ``months`` is consumed as it is written, so only one month of
    transactions is in memory at a time.
    """
    date_tab = _table([f"{start + dt.timedelta(days=i)},".encode() for i in range(n_days)])
    cust_tab = _with_sep(customer_hex, b",")
    art_tab = _table([f"{a:010d},".encode() for a in cat.article_id])
    # Every price a row can carry, as text: article x discount level x channel.
    units = np.round(cat.price[:, None] * DISCOUNTS[None, :], 2)
    price_txt = (units / PRICE_DIVISOR).astype(np.bytes_)  # shortest round-trip repr
    tails = np.stack([np.char.add(price_txt, b",1\n"), np.char.add(price_txt, b",2\n")], axis=-1)
    tail_tab = _table(tails.reshape(-1))
    n_levels = len(DISCOUNTS)

    tmp = tmp_path(path)
    total = 0
    with open(tmp, "wb") as f:
        f.write(_header(TRANSACTION_COLUMNS))
        last = time.perf_counter()
        since = 0
        for chunk in months:
            n = len(chunk.day)
            tail = (chunk.article.astype(np.int64) * n_levels + chunk.level) * 2 + (chunk.channel - 1)
            for a in range(0, n, chunk_rows):
                s = slice(a, a + chunk_rows)
                f.write(_encode([
                    (*date_tab, chunk.day[s]),
                    (*cust_tab, chunk.customer[s]),
                    (*art_tab, chunk.article[s]),
                    (*tail_tab, tail[s]),
                ]))
            total += n
            since += n
            now = time.perf_counter()
            if verbose() or now - last >= PROGRESS_EVERY_S:
                log(STAGE, f"transactions up to {chunk.label}: {total:,} rows written "
                           f"({since / max(now - last, 1e-9):,.0f} rows/s)")
                last, since = now, 0
    return tmp, total


# ---- planted/ ----------------------------------------------------------------------


def write_planted(planted: Path, cat: Catalogue, cust: Customers, scale: float, seed: int, start: dt.date,
                  end: dt.date, g: GenerateConfig, p: Params, profile: str, sizes: dict) -> list[Path]:
    """The ground truth and what made it into planted/; returns the .tmp paths.

    customer_segments.csv and article_clusters.csv label every customer and
    article; segments.json describes segments, clusters and parameters;
    profile.json names the profile and every setting and parameter it used.
    """
    paths = []
    seg_tab = _table([f"{s}\n".encode() for s in range(len(SEGMENTS))])
    tmp = tmp_path(planted / "customer_segments.csv")
    with open(tmp, "wb") as f:
        f.write(b"customer_id,segment\n")
        f.write(_encode([(*_with_sep(cust.hex_id, b","), None), (*seg_tab, cust.segment.astype(np.int64))]))
    paths.append(tmp)

    tmp = tmp_path(planted / "article_clusters.csv")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("article_id,cluster\n")
        f.writelines(f"{cat.article_id[i]:010d},{cat.cluster[i]}\n" for i in cat.file_order)
    paths.append(tmp)
    info = {
        "segments": {str(i): list(s.clusters) for i, s in enumerate(SEGMENTS)},
        "segment_info": {
            str(i): {"name": s.name, "ages": list(s.ages), "size": s.size, "clusters": list(s.clusters),
                     "cluster_weights": list(CLUSTER_WEIGHTS),
                     "customers": int((cust.segment == i).sum())}
            for i, s in enumerate(SEGMENTS)
        },
        "clusters": {
            str(i): {"name": c.name, "index_code": c.index_code, "sections": list(c.sections),
                     "product_types": sorted({t for t, _ in c.types}),
                     "garment_groups": sorted({gg for _, gg in c.types}), "colours": list(c.colours),
                     "appearances": list(c.appearances), "typical_price": round(c.price / PRICE_DIVISOR, 6),
                     "season_peak_doy": c.season[0], "season_amplitude": c.season[1],
                     "articles": int((cat.cluster == i).sum())}
            for i, c in enumerate(CLUSTERS)
        },
        "params": {
            "scale": scale, "seed": seed, "start_date": str(start), "end_date": str(end), **sizes,
            "repeat_share": g.repeat_share, "explore_share": g.explore_share,
            "never_buy_share": g.never_buy_share, "min_articles": g.min_articles,
            "min_customers": g.min_customers, **segments_json_params(p),
        },
    }
    tmp = tmp_path(planted / "segments.json")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    paths.append(tmp)

    # segments.json keeps the layout it had before profiles; this file names
    # the profile and lists every setting and parameter it resolved to.
    settings = {k: getattr(g, k) for k in PROFILE_SETTINGS}
    tmp = tmp_path(planted / "profile.json")
    info = {"profile": profile, "overrides": PROFILES[profile], "scale": scale, "seed": seed,
            "settings": settings, "params": record(p)}
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    paths.append(tmp)
    return paths
