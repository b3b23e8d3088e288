"""How fast prepared pretraining CSVs are read back: `load_pretraining_csv` on a CSV of about --size-mb megabytes
(the given CSV's rows repeated), then batches served from the loaded dataset the way training serves them
(shuffled `DataLoader` + `collate_batch`). Reports rows/s and MB/s of the read, batches and rows/s served, and the
memory each takes; writes ``read.json`` and ``read.md`` in --output-dir.

    python scripts/bench_read.py                        # the default corpus's train.csv, grown to 1 GB
    python scripts/bench_read.py --csv data/mine/train.csv --size-mb 256 --serve-batches 2000

The read runs with an empty Hugging Face datasets cache of its own (the first read of a CSV converts it to Arrow;
later reads of the same file reuse that), removed afterwards with the grown CSV. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/bench_read.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))


def grow_csv(source: Path, target: Path, size_bytes: int) -> int:
    """Write `source`'s header once and its rows over and over (at least once) until `target` holds `size_bytes`;
    return the number of rows written."""
    with open(source, encoding="utf-8", newline="") as handle:
        header, body = handle.readline(), handle.read()
    rows_per_copy = body.count("\n")
    copies = max(1, -(-(size_bytes - len(header)) // max(1, len(body.encode("utf-8")))))
    with open(target, "w", encoding="utf-8", newline="") as out:
        out.write(header)
        for _ in range(copies):
            out.write(body)
    return rows_per_copy * copies


def measure(csv_path: Path, size_mb: float, batch_size: int, serve_batches: int, work: Path) -> dict:
    """Read the grown CSV with `load_pretraining_csv` in a fresh process-wide datasets cache, then serve batches."""
    import datasets
    import torch
    from torch.utils.data import DataLoader

    from bench import peak_rss_bytes, reset_peak_rss, rss_bytes, shown_path
    from minibert_hf.collator import collate_batch
    from minibert_hf.pretraining_csv import load_pretraining_csv

    datasets.config.HF_DATASETS_CACHE = work / "datasets-cache"  # a cold read: the Arrow conversion is timed
    big = work / "big.csv"
    rows = grow_csv(csv_path, big, int(size_mb * 1024 * 1024))
    size = big.stat().st_size
    before = rss_bytes()
    can_reset = reset_peak_rss()
    started = time.perf_counter()
    dataset = load_pretraining_csv(big, show_progress=True)
    read_seconds = time.perf_counter() - started
    read_peak, read_after = peak_rss_bytes(), rss_bytes()
    assert len(dataset) == rows, (len(dataset), rows)

    reset_peak_rss()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_batch,
                        generator=torch.Generator().manual_seed(0))
    served, tokens, started = 0, 0, time.perf_counter()
    for batch in loader:
        served += 1
        tokens += int(batch["attention_mask"].sum())
        if served == serve_batches:
            break
    serve_seconds = time.perf_counter() - started
    return {
        "csv": shown_path(csv_path), "grown_csv_mb": round(size / 2**20, 1), "rows": rows,
        "read": {"seconds": round(read_seconds, 2), "rows_per_second": round(rows / read_seconds),
                 "mb_per_second": round(size / 2**20 / read_seconds, 1),
                 "rss_before_mb": round(before / 2**20), "peak_rss_mb": round(read_peak / 2**20),
                 "rss_after_mb": round(read_after / 2**20), "peak_is_since_start": not can_reset},
        "serve": {"batch_size": batch_size, "batches": served, "seconds": round(serve_seconds, 2),
                  "batches_per_second": round(served / serve_seconds, 1),
                  "rows_per_second": round(served * batch_size / serve_seconds),
                  "tokens_per_second": round(tokens / serve_seconds), "peak_rss_mb": round(peak_rss_bytes() / 2**20)},
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }


def markdown(result: dict, command: str) -> str:
    read, serve = result["read"], result["serve"]
    since = " (peak since the process started)" if read["peak_is_since_start"] else ""
    return "\n".join([
        "# Reading prepared pretraining CSVs back",
        "",
        f"`load_pretraining_csv` on {result['grown_csv_mb']} MB ({result['rows']:,} rows: {result['csv']} repeated), "
        f"with an empty datasets cache, then {serve['batches']:,} shuffled batches of {serve['batch_size']} served "
        "through `collate_batch`.",
        "",
        "| step | seconds | rate | memory |",
        "|---|---:|---:|---:|",
        f"| read (CSV -> checked Arrow dataset) | {read['seconds']} | {read['rows_per_second']:,} rows/s, "
        f"{read['mb_per_second']} MB/s | RSS {read['rss_before_mb']} -> peak {read['peak_rss_mb']}{since}, "
        f"after {read['rss_after_mb']} MB |",
        f"| serve (shuffled batches, collate) | {serve['seconds']} | {serve['batches_per_second']} batches/s, "
        f"{serve['rows_per_second']:,} rows/s, {serve['tokens_per_second']:,} tokens/s | peak RSS "
        f"{serve['peak_rss_mb']} MB |",
        "",
        f"{result['cpus']} CPUs, {result['threads']} torch threads. Command: `{command}`",
        "",
    ])


def main(argv=None) -> int:
    from minibert_hf.cli import ArgumentParser
    from minibert_hf.errors import MiniBertInputError

    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", help="a prepared train.csv (default: the default corpus's, prepared if needed)")
    parser.add_argument("--size-mb", type=float, default=1024.0, help="grow the CSV to about this size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--serve-batches", type=int, default=5000, help="batches to serve after the read")
    parser.add_argument("--output-dir", default="bench")
    args = parser.parse_args(argv)
    if args.size_mb <= 0 or args.batch_size < 1 or args.serve_batches < 1:
        parser.error("--size-mb, --batch-size and --serve-batches must be positive")
    if args.csv is None:
        from minibert_hf.pretraining_data import PreparationOptions, prepare_default_data

        csv_path = prepare_default_data(PreparationOptions(dupe_factor=3)) / "train.csv"
    else:
        csv_path = Path(args.csv)
        if not csv_path.is_file():
            raise MiniBertInputError("no such CSV file", file=csv_path)

    work = Path(tempfile.mkdtemp(prefix="minibert-read-"))
    try:
        result = measure(csv_path, args.size_mb, args.batch_size, args.serve_batches, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from minibert_hf.atomic import write_json, write_text

    shown = [f"--csv {result['csv']}"] if args.csv else []  # no folder of this machine in the results
    shown += [f"--size-mb {args.size_mb:g}", f"--batch-size {args.batch_size}", f"--serve-batches {args.serve_batches}"]
    report = markdown(result, "python scripts/bench_read.py " + " ".join(shown))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "read.json", result)
    write_text(out / "read.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    from minibert_hf.cli import run_cli

    run_cli(main)
