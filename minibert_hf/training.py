"""Pretraining with Accelerate: the loop (`train`), `evaluate`, and the helpers that save what it learns.

One loop runs on a laptop CPU (`python scripts/pretrain.py`), on one GPU or on many (`accelerate launch`):

    for each epoch, for each micro-batch:
        seed the micro-batch (dropout, dynamic masks)      <- a pure function of (seed, epoch, micro-batch number)
        forward, backward                                   <- inside accelerator.accumulate(model)
        at an accumulation boundary: clip, step (unless the gradient is NaN/inf), schedule, zero
        every --logging-steps: metrics.jsonl;  every --eval-steps: evaluate;  every --checkpointing-steps: save_state
    after each epoch: evaluate, OUTPUT/epoch-N/;  at the end: OUTPUT/final/

Randomness is a function of the position in the data, not of the history of the run: micro-batch *i* of epoch *e*
(numbered across all processes) always gets the same dropout and the same dynamic masks. So a run resumed from a
checkpoint ends with the same weights as an uninterrupted one, and 2 processes give the same losses as 1 process
with twice the gradient accumulation (same global batch). Data order comes from accelerate's seedable sampler
(seed + epoch); resuming skips the batches already seen (`skip_first_batches`).

Checkpoints (`OUTPUT/checkpoints/step-N/`), `epoch-N/` and `final/` are written under a temporary name and renamed
when complete, so a crash never leaves a half-written folder where a later run would take it for a good one.
Nothing is unpickled: weights are safetensors, and accelerate loads optimizer/scheduler/RNG state with
`torch.load(weights_only=True)`; our own resume state is JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import MiniBertInputError, UserError

MASK_ID, NUM_SPECIAL = 3, 5  # [PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [UNK]=4
MAX_NONFINITE_IN_A_ROW = 5
METRIC_KEYS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "perplexity")


class TrainingDiverged(RuntimeError):
    """The loss stayed NaN/inf for several steps in a row; training stops with a one-line message (exit 1)."""


@dataclasses.dataclass
class TrainingArguments:
    """Every option of `scripts/pretrain.py` (the CLI flags are these names with dashes)."""

    train_file: list[str] | None = None       # CSV(s) from prepare_data.py or the course lab; none: default corpus
    test_file: list[str] | None = None        # default: test.csv next to the (first) train file
    tokenizer: str | None = None              # default: tokenizer/ next to the train file
    preset: str = "mini"
    init_from: str | None = None              # continue from a saved model folder instead of a fresh preset
    config_overrides: str | None = None       # "hidden_size=256,hidden_dropout_prob=0.1": change the preset's fields
    output_dir: str = "outputs/minibert"
    overwrite_output_dir: bool = False
    epochs: int = 1
    max_steps: int | None = None              # optimizer steps; overrides --epochs
    batch_size: int = 32                      # per process
    eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0                # 0: no clipping
    masking: str = "dynamic"                  # static: the CSV's masks; dynamic: fresh 80/10/10 masks every time
    mlm_probability: float = 0.15             # for dynamic masking
    mixed_precision: str | None = None        # no|bf16|fp16; None: accelerate's config
    seed: int = 42
    logging_steps: int = 50
    eval_steps: int = 0                       # 0: evaluate after each epoch only
    checkpointing_steps: int = 0              # 0: only at the end
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    report_to: str = "none"                   # none|tensorboard
    num_workers: int = 0
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    vocab_size: int = 8192                    # only when preparing the default corpus
    max_seq_length: int = 128                 # only when preparing the default corpus
    show_progress: bool = True

    @classmethod
    def from_namespace(cls, namespace):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in known})

    def model_config(self, **fields):
        """The preset's config with --config-overrides applied, then `fields` (e.g. the tokenizer's vocab size)."""
        from .configuration_minibert import MiniBertConfig

        try:
            return MiniBertConfig.from_preset(self.preset, **{**parse_config_overrides(self.config_overrides),
                                                              **fields})
        except ValueError as error:
            raise UserError(f"--config-overrides: {error}") from None

    def check(self):
        """Raise a UserError (one line) for an option that cannot work, before anything is loaded or written."""
        from .configuration_minibert import PRESETS

        def need(ok, message):
            if not ok:
                raise UserError(message)

        if self.init_from is None:
            need(self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
            self.model_config()  # a bad --config-overrides fails here, before any data is read
        else:
            need(not self.config_overrides, "--config-overrides applies to a fresh preset, not to --init-from")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("logging_steps", "eval_steps", "checkpointing_steps", "num_workers"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 0, f"--{name.replace('_', '-')} must be 0 or more, got {value}")
        need(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        need(self.save_total_limit is None or self.save_total_limit >= 1,
             f"--save-total-limit must be at least 1, got {self.save_total_limit}")
        need(math.isfinite(self.learning_rate) and self.learning_rate > 0,
             f"--learning-rate must be positive, got {self.learning_rate}")
        need(self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}")
        need(0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.max_grad_norm >= 0, f"--max-grad-norm must be 0 or more, got {self.max_grad_norm}")
        need(0 < self.mlm_probability < 1, f"--mlm-probability must be in (0, 1), got {self.mlm_probability}")
        need(self.masking in ("static", "dynamic"), f"--masking must be static or dynamic, got {self.masking!r}")
        need(self.mixed_precision in (None, "no", "bf16", "fp16"),
             f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        need(self.report_to in ("none", "tensorboard"), f"--report-to must be none or tensorboard, got {self.report_to!r}")
        need(not self.push_to_hub or self.hub_model_id, "--push-to-hub needs --hub-model-id")
        for path in [*(self.train_file or []), *(self.test_file or [])]:
            if not os.path.exists(path):
                raise MiniBertInputError("file does not exist", file=path)
            if os.path.isdir(path):
                raise MiniBertInputError("is a directory, expected a CSV file", file=path)
        if self.tokenizer is not None and not os.path.isdir(self.tokenizer):
            raise MiniBertInputError("folder does not exist" if not os.path.exists(self.tokenizer) else
                                     "not a folder", file=self.tokenizer)
        if self.init_from is not None:
            from .inference import check_model_folder

            check_model_folder(self.init_from)  # a MiniBERT save_pretrained folder with safetensors weights


def parse_config_overrides(text: str | None) -> dict:
    """"hidden_size=256,hidden_dropout_prob=0" -> {"hidden_size": 256, "hidden_dropout_prob": 0.0}.

    Each value takes the type of the field's default (int, float, bool or str); an unknown field is an error.
    """
    from .configuration_minibert import MiniBertConfig

    defaults = MiniBertConfig().to_dict()
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"expected key=value, got {item!r}")
        if key not in defaults or key in ("auto_map", "architectures", "model_type", "transformers_version"):
            raise ValueError(f"unknown config field {key!r}")
        kind = float if defaults[key] is None else type(defaults[key])  # classifier_dropout: None or a float
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                overrides[key] = value.lower() in ("true", "1")
            elif kind in (int, float):
                overrides[key] = kind(value)
            else:
                overrides[key] = value
        except ValueError:
            raise ValueError(f"{key} must be {kind.__name__}, got {value!r}") from None
    return overrides


# ----------------------------------------------------------------------------------------------------- the loop


def train(args) -> dict:
    """Pretrain MLM + NSP as `args` (a TrainingArguments or an argparse Namespace) says; return the final metrics."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    args = args if isinstance(args, TrainingArguments) else TrainingArguments.from_namespace(args)
    args.check()
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        # torchrun / `accelerate launch --multi_gpu` on a machine without GPUs: DDP over CPU processes (gloo).
        cpu=bool(os.environ.get("LOCAL_RANK")) and not torch.cuda.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with="tensorboard" if args.report_to == "tensorboard" else None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, whatever the process count
    )
    check_output_dir(output_dir, args, accelerator.process_index)
    if args.overwrite_output_dir and not args.resume_from_checkpoint and accelerator.is_main_process:
        for old in [output_dir / "checkpoints", output_dir / "final", *output_dir.glob("epoch-*")]:
            shutil.rmtree(old, ignore_errors=True)  # a fresh run: nothing of the previous one may be taken for its

    with accelerator.main_process_first():
        data = load_data(args)
    set_seed(args.seed)  # the same initial weights on every process and with any process count
    model, tokenizer = build_model(args, data)
    train_dl, eval_dl = make_dataloaders(data, args)
    batches_per_process = math.ceil(len(train_dl) / accelerator.num_processes)  # accelerate evens out the last
    steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    # The fused AdamW kernel does the whole update in one pass (bench: optimizer step 103 -> 25 ms at 1 thread).
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    lr_scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(args.warmup_ratio * total_steps),
                                 num_training_steps=total_steps)
    model, optimizer, train_dl, eval_dl, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dl, eval_dl, lr_scheduler)
    masker = DynamicMasker(len(tokenizer), args.mlm_probability) if args.masking == "dynamic" else None
    run = dict(steps_per_epoch=steps_per_epoch, total_steps=total_steps, batch_size=args.batch_size,
               gradient_accumulation_steps=args.gradient_accumulation_steps, num_processes=accelerator.num_processes)
    if args.report_to == "tensorboard":
        accelerator.init_trackers("minibert", config=tracker_config(args))

    global_step = resume(accelerator, args, output_dir, run)
    start_epoch, skip = divmod(global_step, steps_per_epoch)
    skip *= args.gradient_accumulation_steps
    if global_step and skip == 0:  # resumed at the end of an epoch: finish it (eval, epoch-N/) with no batches
        start_epoch, skip = start_epoch - 1, len(train_dl)
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator, steps_per_epoch, truncate_after=global_step)
    meter = TrainMeter(log, accelerator, args, total_steps, global_step)
    metrics = None

    for epoch in range(start_epoch, num_epochs):
        model.train()
        accelerator.step = 0  # accumulation groups start with the epoch (also after a resume)
        train_dl.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        for index, batch in enumerate(batches, start=skip):
            micro_batch = index * accelerator.num_processes + accelerator.process_index
            torch.manual_seed(micro_batch_seed(args.seed, epoch, micro_batch))  # dropout and dynamic masks
            if masker is not None:
                batch = masker(batch)
            with accelerator.accumulate(model):
                outputs = model(**batch)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
                    if torch.isfinite(grad_norm):  # NaN/inf anywhere (any process, any micro-batch) skips the step
                        optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
            meter.add(outputs, batch)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            meter.step_done(global_step, grad_norm, lr_scheduler.get_last_lr()[0])
            if args.eval_steps and global_step % args.eval_steps == 0:
                metrics = evaluate_and_log(model, eval_dl, accelerator, log, global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, run, args.save_total_limit)
            if global_step >= total_steps:
                break
        skip = 0
        if global_step % steps_per_epoch == 0 or global_step >= total_steps:  # the epoch ran to its end
            if not (metrics and metrics["step"] == global_step):
                metrics = evaluate_and_log(model, eval_dl, accelerator, log, global_step)
            if global_step % steps_per_epoch == 0:
                save_model(accelerator, model, tokenizer, output_dir / f"epoch-{epoch + 1}", args, data, metrics)
        if global_step >= total_steps:
            break

    meter.close()
    if metrics is None or metrics["step"] != global_step:  # e.g. resumed after the last step
        metrics = evaluate_and_log(model, eval_dl, accelerator, log, global_step)
    if args.checkpointing_steps and not (output_dir / "checkpoints" / f"step-{global_step}").exists():
        save_checkpoint(accelerator, output_dir, global_step, run, args.save_total_limit)
    final = save_model(accelerator, model, tokenizer, output_dir / "final", args, data, metrics)
    if args.report_to == "tensorboard":
        accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        from .hub import push_to_hub

        push_to_hub(final, args.hub_model_id, private=args.hub_private)
    accelerator.wait_for_everyone()
    return {key: metrics[f"eval_{key}"] for key in METRIC_KEYS} | {"step": global_step, "final": str(final)}


# -------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, dataloader, accelerator) -> dict:
    """Loss, MLM/NSP loss and accuracy, and MLM perplexity over a whole (prepared) dataloader.

    MLM numbers average over target tokens, NSP numbers over examples; `loss` = mlm_loss + nsp_loss, the training
    objective. Per-example sums are gathered with `gather_for_metrics`, which drops the samples repeated to even
    out the last batch across processes, so the result is the same with any number of processes.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64)  # mlm loss sum, targets, correct targets, nsp loss sum, nsp correct
    examples = 0
    for batch in dataloader:
        outputs = model(**batch)
        labels = batch["labels"]
        targets = labels != -100
        target_ids = labels[targets]
        row_of_target = targets.nonzero()[:, 0]  # prediction_logits is sparse: one row per target, row-major
        logits = outputs.prediction_logits.float()
        rows = labels.shape[0]
        mlm_loss = torch.zeros(rows, device=labels.device).index_add_(
            0, row_of_target, F.cross_entropy(logits, target_ids, reduction="none"))
        mlm_correct = torch.zeros(rows, device=labels.device).index_add_(
            0, row_of_target, (logits.argmax(-1) == target_ids).float())
        nsp_logits = outputs.seq_relationship_logits.float()
        nsp_label = batch["next_sentence_label"].view(-1)
        per_example = torch.stack([
            mlm_loss, targets.sum(1).float(), mlm_correct,
            F.cross_entropy(nsp_logits, nsp_label, reduction="none"), (nsp_logits.argmax(-1) == nsp_label).float(),
        ], dim=1)
        per_example = accelerator.gather_for_metrics(per_example)
        totals += per_example.double().sum(0).cpu()
        examples += per_example.shape[0]
    model.train(was_training)
    mlm_loss_sum, num_targets, mlm_correct, nsp_loss_sum, nsp_correct = totals.tolist()
    num_targets, examples = max(num_targets, 1), max(examples, 1)
    mlm_loss, nsp_loss = mlm_loss_sum / num_targets, nsp_loss_sum / examples
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_accuracy": mlm_correct / num_targets, "nsp_accuracy": nsp_correct / examples,
            "perplexity": math.exp(min(mlm_loss, 50.0))}


def evaluate_and_log(model, eval_dl, accelerator, log, step) -> dict:
    result = evaluate(model, eval_dl, accelerator)
    record = log.write(step=step, **{f"eval_{key}": value for key, value in result.items()})
    accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    if accelerator.is_main_process:
        write_loss_curve(log.path, log.path.parent / "loss_curve.png")
    return record


# -------------------------------------------------------------------------------------------- data and model


def load_data(args) -> dict:
    """Datasets, tokenizer folder and a description of the data (for the model card)."""
    from .pretraining_data import load_pretraining_csv

    train_files = args.train_file
    if not train_files:
        data_dir = prepare_default_data(args)
        train_files, test_files = [str(data_dir / "train.csv")], [str(data_dir / "test.csv")]
    else:
        data_dir = Path(train_files[0]).parent
        test_files = args.test_file or ([str(data_dir / "test.csv")] if (data_dir / "test.csv").is_file() else None)
        if not test_files:
            raise UserError(f"no --test-file given and no test.csv next to {train_files[0]}")
    tokenizer_dir = args.tokenizer or str(data_dir / "tokenizer")
    if not os.path.isdir(tokenizer_dir):
        raise MiniBertInputError("no tokenizer folder here; pass --tokenizer (prepare_data.py writes one)",
                                 file=tokenizer_dir)
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    vocab_size, max_length = len(tokenizer), None
    if args.init_from:
        # Only the config (cheap), before any weights load: the model's vocabulary bounds the CSV ids (build_model
        # checks it covers the tokenizer) and its positions bound the row length, checked file by file so that
        # the error names the file and row that is too long.
        from .configuration_minibert import MiniBertConfig

        try:
            config = MiniBertConfig.from_pretrained(args.init_from)
        except Exception as error:  # noqa: BLE001 - check() has vetted the folder; this is a last resort
            raise MiniBertInputError(f"cannot read the model's config ({type(error).__name__})",
                                     file=args.init_from) from None
        vocab_size, max_length = config.vocab_size, config.max_position_embeddings
    train = load_pretraining_csv(train_files, vocab_size=vocab_size, max_length=max_length)
    test = load_pretraining_csv(test_files, vocab_size=vocab_size, max_length=max_length)
    for name, dataset, files in (("training", train, train_files), ("test", test, test_files)):
        if len(dataset) == 0:
            raise MiniBertInputError(f"no {name} rows", file=files[0])
    info = {}
    stats = data_dir / "stats.json"
    if stats.is_file():
        info.update(json.loads(stats.read_text(encoding="utf-8")))
    info.update(train_rows=len(train), test_rows=len(test), masking=args.masking)  # no local paths in the card
    longest = max(max(map(len, train["input_ids"])), max(map(len, test["input_ids"])))
    return dict(train=train, test=test, tokenizer=tokenizer, info=info, longest=longest, train_files=train_files)


def preparation_fingerprint() -> str:
    """A short hash of the code that turns the default corpus into CSVs (corpus reading, tokenizer, pairs and masks):
    a cache written by other code is never taken for this code's output."""
    from . import corpus, pretraining_data, tokenizer

    digest = hashlib.sha256()
    for module in (corpus, pretraining_data, tokenizer):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def prepare_default_data(args) -> Path:
    """The default corpus prepared once (data seed and test split: prepare_data.py's defaults) into the cache
    ($MINIBERT_CACHE, default ~/.cache/minibert-hf), reused by later runs of the same preparation code.

    The folder is named by the options and `preparation_fingerprint()`; folders of other code versions are left
    alone (another checkout may be using them) and can be deleted by hand.
    """
    from .corpus import cache_dir
    from .pretraining_data import prepare_pretraining_data

    folder = cache_dir() / (f"pretraining-default-vocab{args.vocab_size}-len{args.max_seq_length}-"
                            f"{preparation_fingerprint()}")
    if not all((folder / name).exists() for name in ("train.csv", "test.csv", "tokenizer", "stats.json")):
        tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"Preparing the default corpus into {folder} (once) ...", flush=True)
        prepare_pretraining_data(tmp, vocab_size=args.vocab_size, max_seq_length=args.max_seq_length)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


def build_model(args, data):
    from .modeling_minibert import MiniBertForPreTraining

    tokenizer = data["tokenizer"]
    if args.init_from:
        try:
            model = MiniBertForPreTraining.from_pretrained(args.init_from, use_safetensors=True)
        except Exception as error:  # noqa: BLE001 - a corrupted folder becomes one clear line
            first = (str(error).strip().splitlines() or [""])[0]
            raise MiniBertInputError(f"cannot load the model ({type(error).__name__}: {first})",
                                     file=args.init_from) from error
        if model.config.vocab_size < len(tokenizer):
            raise MiniBertInputError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the "
                                     f"tokenizer's ({len(tokenizer)})", file=args.init_from)
    else:
        config = args.model_config(vocab_size=len(tokenizer))
        config.max_position_embeddings = max(config.max_position_embeddings, data["longest"])  # only ever grows
        model = MiniBertForPreTraining(config)
    if data["longest"] > model.config.max_position_embeddings:
        raise MiniBertInputError(f"rows have up to {data['longest']} tokens but the model takes at most "
                                 f"{model.config.max_position_embeddings}", file=data["train_files"][0])
    return model, tokenizer


def make_dataloaders(data, args):
    from torch.utils.data import DataLoader

    from .pretraining_data import collate_batch

    train_dl = DataLoader(data["train"], batch_size=args.batch_size, shuffle=True, collate_fn=collate_batch,
                          num_workers=args.num_workers)
    eval_dl = DataLoader(data["test"], batch_size=args.eval_batch_size or 2 * args.batch_size, shuffle=False,
                         collate_fn=collate_batch, num_workers=args.num_workers)
    return train_dl, eval_dl


def parameter_groups(model, weight_decay):
    """Weight decay on matrices only: biases and LayerNorm weights (1-D) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def micro_batch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of micro-batch `index` (numbered across processes) of `epoch`: independent of how we got there."""
    digest = hashlib.sha256(f"minibert:{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class DynamicMasker:
    """RoBERTa-style dynamic masking of a collated batch: restore the original tokens, then draw fresh targets.

    The same rule as `pretraining_data.DynamicMasking` (a collator): each non-special real token is a target with
    probability `mlm_probability` (at least one per row), replaced by [MASK] 80% of the time, by a random
    non-special token 10%, kept 10%. It works on a collated batch inside the loop rather than in the DataLoader,
    drawing from the global torch RNG that the loop seeds per micro-batch, so that the masks depend only on the
    micro-batch's position in the data (a collator runs ahead of the loop and skipped batches are never collated,
    which would make a resumed run draw different masks).
    """

    def __init__(self, vocab_size: int, mlm_probability: float = 0.15):
        self.vocab_size, self.mlm_probability = vocab_size, mlm_probability

    def __call__(self, batch: dict) -> dict:
        input_ids, labels = batch["input_ids"].cpu(), batch["labels"].cpu()
        original = torch.where(labels != -100, labels, input_ids)
        candidates = (original >= NUM_SPECIAL) & (batch["attention_mask"].cpu() == 1)
        scores = torch.rand(original.shape).masked_fill(~candidates, 2.0)
        targets = scores < self.mlm_probability
        first = scores.argmin(dim=1, keepdim=True)  # each row's best candidate is a target if it has none
        targets.scatter_(1, first, targets.gather(1, first) | candidates.gather(1, first))
        choice = torch.rand(original.shape)
        random_ids = torch.randint(NUM_SPECIAL, self.vocab_size, original.shape)
        masked = torch.where(targets & (choice < 0.8), torch.full_like(original, MASK_ID), original)
        masked = torch.where(targets & (choice >= 0.8) & (choice < 0.9), random_ids, masked)
        device = batch["input_ids"].device
        return {**batch, "input_ids": masked.to(device),
                "labels": torch.where(targets, original, torch.full_like(original, -100)).to(device)}


# -------------------------------------------------------------------------------------------- saving


def check_output_dir(output_dir: Path, args, process_index: int = 0) -> None:
    """Fail before training, not after: the output folder must be writable and must not hold another run."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}-{process_index}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the output directory: {error.strerror or error}",
                        file=output_dir) from error
    previous = [output_dir / name for name in ("final", "checkpoints", "metrics.jsonl")]
    if not args.resume_from_checkpoint and not args.overwrite_output_dir and any(p.exists() for p in previous):
        raise UserError("the output directory already holds a run; pass --resume-from-checkpoint latest to "
                        "continue it or --overwrite-output-dir to start again", file=output_dir)


def atomic_folder(folder: Path, write) -> Path:
    """Call `write(tmp)` on a temporary sibling folder, then rename it to `folder` (replacing an older one)."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")  # one writer per folder (the main process); a crashed
    shutil.rmtree(tmp, ignore_errors=True)        # run's leftover is cleared by the next save
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(f".old-{folder.name}")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def save_model_folder(model, tokenizer, folder, metrics=None, data_info=None, training_args=None,
                      loss_curve=None, state_dict=None, model_name=None, repo_id=None) -> Path:
    """A complete `save_pretrained` folder (config with auto_map, the code files, model.safetensors, tokenizer,
    README.md model card), written under a temporary name and renamed when complete."""
    from .hub import write_model_card

    def write(tmp):
        with quiet_saving():  # transformers 5 writes safetensors only (no safe_serialization argument any more)
            model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        curve = loss_curve if loss_curve is not None and Path(loss_curve).is_file() else None
        write_model_card(tmp, config=model.config, metrics=metrics, data_info=data_info,
                         training_args=training_args, loss_curve=curve, repo_id=repo_id,
                         model_name=model_name or Path(folder).resolve().name)

    return atomic_folder(Path(folder), write)


@contextlib.contextmanager
def quiet_saving():
    """No warnings below error level from transformers and accelerate ("Removed shared tensor ..." for the tied
    embeddings, which is expected) and no progress bars ("Writing model shards") while a folder is written: a
    run's stderr keeps its own lines, and a failure after a save is its last line. Restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    accelerate_logger = logging.getLogger("accelerate")
    accelerate_level = accelerate_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    accelerate_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        accelerate_logger.setLevel(accelerate_level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def save_model(accelerator, model, tokenizer, folder, args, data, metrics) -> Path:
    state_dict = accelerator.get_state_dict(model)  # on every process (FSDP gathers the shards)
    if accelerator.is_main_process:
        card_metrics = {k.removeprefix("eval_"): v for k, v in (metrics or {}).items() if k.startswith("eval_")}
        save_model_folder(accelerator.unwrap_model(model), tokenizer, folder, metrics=card_metrics,
                          data_info=data["info"], training_args=card_training_args(args),
                          loss_curve=Path(args.output_dir) / "loss_curve.png", state_dict=state_dict,
                          model_name=Path(args.output_dir).resolve().name, repo_id=args.hub_model_id)
    accelerator.wait_for_everyone()
    return Path(folder)


def card_training_args(args) -> dict:
    keep = ("preset", "config_overrides", "init_from", "epochs", "max_steps", "batch_size",
            "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
            "masking", "mlm_probability", "mixed_precision", "seed")
    return {k: getattr(args, k) for k in keep if getattr(args, k) is not None}


def tracker_config(args) -> dict:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in card_training_args(args).items()}


CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed from their temporary name, with training_state.json), oldest first."""
    folder = Path(output_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = CHECKPOINT_RE.match(path.name)
            if match and (path / "training_state.json").is_file():
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(accelerator, output_dir: Path, step: int, run: dict, save_total_limit=None) -> Path:
    """accelerator.save_state into checkpoints/.tmp-step-N, then rename to step-N; keep the newest K."""
    folder = Path(output_dir) / "checkpoints" / f"step-{step}"
    tmp = folder.with_name(f".tmp-{folder.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with quiet_saving():
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "training_state.json").write_text(json.dumps({"step": step, **run}, indent=2), encoding="utf-8")
        old = folder.with_name(f".old-{folder.name}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        if save_total_limit:
            for stale in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def resume(accelerator, args, output_dir: Path, run: dict) -> int:
    """Restore model, optimizer, scheduler and RNG from a checkpoint; return the optimizer step to continue from."""
    if not args.resume_from_checkpoint:
        return 0
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            accelerator.print(f"No checkpoint in {output_dir / 'checkpoints'} yet: starting from step 0.")
            return 0
        folder = found[-1]
    else:
        folder = Path(args.resume_from_checkpoint)
        if not (folder / "training_state.json").is_file():
            raise MiniBertInputError("not a complete checkpoint (no training_state.json)", file=folder)
    state = json.loads((folder / "training_state.json").read_text(encoding="utf-8"))
    # Micro-batches are numbered across processes, so the process count may change, not the batch layout.
    layout = lambda r: (r["steps_per_epoch"], r["batch_size"], r["num_processes"] * r["gradient_accumulation_steps"])
    if layout(state) != layout(run):
        raise UserError(f"checkpoint {folder} was written with batch size {state['batch_size']} x "
                        f"{state['num_processes']} processes x {state['gradient_accumulation_steps']} accumulation "
                        f"steps ({state['steps_per_epoch']} steps per epoch); this run differs")
    try:
        accelerator.load_state(str(folder))  # safetensors weights; the rest with torch.load(weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated or corrupted file: one line, not a traceback
        raise MiniBertInputError(f"cannot load the checkpoint (corrupted?): {type(error).__name__}",
                                 file=folder) from None
    accelerator.print(f"Resumed from {folder} at step {state['step']}.")
    return int(state["step"])


# -------------------------------------------------------------------------------------------- logging


class MetricsLog:
    """OUTPUT/metrics.jsonl: one JSON object per log or eval event (main process); mirrored to trackers."""

    def __init__(self, path: Path, accelerator, steps_per_epoch: int, truncate_after: int = 0):
        self.path, self.accelerator, self.steps_per_epoch = Path(path), accelerator, steps_per_epoch
        if accelerator.is_main_process:
            kept = []
            if truncate_after and self.path.is_file():  # a resumed run rewrites what came after its checkpoint
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if record.get("step", 0) <= truncate_after:
                        kept.append(line)
            text = "".join(line + "\n" for line in kept)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)

    def write(self, step: int, **values) -> dict:
        record = {"step": step, "epoch": step / self.steps_per_epoch, **values}
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self.accelerator.log(numbers, step=record["step"])
        return record


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_loss_curve(metrics_path, png_path) -> None:
    """Train and eval loss (left) and eval MLM/NSP accuracy (right) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    evals = [r for r in records if "eval_loss" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        left.plot(*zip(*train), label="train loss", alpha=0.8)
    if evals:
        left.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
        right.plot([r["step"] for r in evals], [r["eval_mlm_accuracy"] for r in evals], "o-", label="MLM accuracy")
        right.plot([r["step"] for r in evals], [r["eval_nsp_accuracy"] for r in evals], "o-", label="NSP accuracy")
    left.set(xlabel="step", ylabel="loss (MLM + NSP)", title="Loss")
    right.set(xlabel="step", ylabel="accuracy", title="Held-out accuracy", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(f".{Path(png_path).name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


class TrainMeter:
    """Training-side bookkeeping: running loss/token sums between log lines (summed over processes when
    written), the progress bar, and the count of steps skipped for a NaN/inf gradient (abort after a few in a row)."""

    def __init__(self, log, accelerator, args, total_steps, initial_step):
        from tqdm.auto import tqdm

        self.log, self.accelerator, self.logging_steps = log, accelerator, args.logging_steps
        self.learning_rate = args.learning_rate
        self.window = torch.zeros(5, dtype=torch.float64)  # loss, mlm_loss, nsp_loss, finite micro-batches, tokens
        self.started = time.perf_counter()
        self.skipped, self.skipped_in_a_row = 0, 0
        self.progress = tqdm(total=total_steps, initial=initial_step, desc="pretraining", unit="step",
                             disable=not (accelerator.is_main_process and args.show_progress), dynamic_ncols=True)

    def add(self, outputs, batch):
        if torch.isfinite(outputs.loss):
            self.window += torch.tensor([outputs.loss.item(), outputs.mlm_loss.item(), outputs.nsp_loss.item(), 1,
                                         batch["attention_mask"].sum().item()], dtype=torch.float64)

    def step_done(self, step, grad_norm, learning_rate):
        self.progress.update(1)
        if torch.isfinite(grad_norm):
            self.skipped_in_a_row = 0
        else:
            self.skipped, self.skipped_in_a_row = self.skipped + 1, self.skipped_in_a_row + 1
            self.log.write(step=step, skipped_nonfinite_step=True, skipped_steps=self.skipped)
            if self.skipped_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise TrainingDiverged(
                    f"the loss was NaN or infinite for {self.skipped_in_a_row} steps in a row (step {step}); "
                    f"no weights were updated by those steps. Try a lower --learning-rate "
                    f"(now {self.learning_rate}) or --mixed-precision no")
        if self.logging_steps and step % self.logging_steps == 0:
            sums = self.accelerator.reduce(self.window.to(self.accelerator.device), reduction="sum").cpu().tolist()
            mean = (lambda total: total / sums[3]) if sums[3] else (lambda total: None)  # None: every loss NaN
            record = self.log.write(step=step, train_loss=mean(sums[0]), train_mlm_loss=mean(sums[1]),
                                    train_nsp_loss=mean(sums[2]), learning_rate=learning_rate,
                                    grad_norm=grad_norm.item() if torch.isfinite(grad_norm) else None,
                                    skipped_steps=self.skipped,
                                    tokens_per_second=sums[4] / (time.perf_counter() - self.started))
            if record["train_loss"] is not None:
                self.progress.set_postfix(loss=f"{record['train_loss']:.3f}",
                                          tok_s=f"{record['tokens_per_second']:.0f}")
            self.window.zero_()
            self.started = time.perf_counter()

    def close(self):
        self.progress.close()
