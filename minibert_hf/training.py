"""Pretraining with Accelerate: the loop (`train`), `evaluate`, and the helpers that save what it learns.

One loop runs on a laptop CPU (`python scripts/pretrain.py`), on one GPU or on many (`accelerate launch`):

    for each epoch, for each micro-batch:
        seed the micro-batch (dropout, dynamic masks)      <- a pure function of (seed, epoch, micro-batch number)
        in the short-row phase (--short-phase-*): cut its rows; dynamic masking: draw its masks
        forward, backward (loss weighted by 1/#micro-batches of its step; gradients sync at the step's last one)
        at the step's last micro-batch: clip, step (unless the gradient is NaN/inf), schedule, zero
        every --logging-steps: metrics.jsonl;  every --eval-steps: evaluate;  every --checkpointing-steps: save_state
    after each epoch: evaluate, OUTPUT/epoch-N/;  at the end: OUTPUT/final/

Randomness is a function of the position in the data, not of the history of the run: micro-batch *i* of epoch *e*
(numbered across all processes) always gets the same dropout and the same dynamic masks. So a run resumed from a
checkpoint ends with the same weights as an uninterrupted one, and 2 processes give the same losses as 1 process
with twice the gradient accumulation (same global batch), also where an epoch's last step is short: processes
take micro-batches in turn, and one that has none left for a step runs a zero-weight stand-in, so no row is ever
counted twice and every process joins each gradient sync (`StepLayout`). Data order comes from accelerate's seedable
sampler (seed + epoch); resuming skips the batches already seen (`skip_first_batches`).

The options are `arguments.PretrainingArguments`; checkpoints (`OUTPUT/checkpoints/step-N/`) live in
`checkpoints.py`, model folders (`epoch-N/`, `final/`) in `model_folder.py`, `metrics.jsonl` in `metrics_log.py`:
each is written under a temporary name and renamed when complete, so a crash never leaves a half-written folder
where a later run would take it for a good one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import check_output_dir, clear_previous_run, resume, save_checkpoint
from .collator import DynamicMasker, collate_batch, truncate_pairs
from .errors import MiniBertInputError, TrainingDiverged, UserError
from .metrics_log import MetricsLog, write_loss_curve
from .tokenizer import MASK_ID, continuation_ids

MAX_NONFINITE_IN_A_ROW = 5
METRIC_KEYS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "mlm_accuracy_at_mask", "nsp_accuracy", "perplexity")


# ----------------------------------------------------------------------------------------------------- the loop


def train(args) -> dict:
    """Pretrain MLM + NSP as `args` (a PretrainingArguments) says; return the final metrics."""
    args.check()
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        # torchrun / `accelerate launch --multi_gpu` on a machine without GPUs: DDP over CPU processes (gloo).
        cpu=bool(os.environ.get("LOCAL_RANK")) and not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        log_with="tensorboard" if args.report_to == "tensorboard" else None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, whatever the process count
    )
    check_output_dir(output_dir, args, accelerator.process_index)
    if args.overwrite_output_dir and not args.resume_from_checkpoint and accelerator.is_main_process:
        clear_previous_run(output_dir)

    with accelerator.main_process_first():
        data = load_data(args)
    set_seed(args.seed)  # the same initial weights on every process and with any process count
    model, tokenizer = build_model(args, data)
    train_dl, eval_dl = make_dataloaders(data, args)
    layout = StepLayout(len(train_dl), accelerator.num_processes, args.gradient_accumulation_steps)
    steps_per_epoch = layout.steps_per_epoch
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    # The fused AdamW kernel does the whole update in one pass (bench: optimizer step 103 -> 25 ms at 1 thread).
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate,
                                  betas=(0.9, args.adam_beta2), fused=accelerator.device.type in ("cpu", "cuda"))
    budget = Budget(total_steps, args.max_train_minutes, accelerator)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_then_linear_decay(budget.progress(step), args.warmup_ratio))
    # Training batches are not evened out (no row repeated on a process that has run out: the loop stands in for
    # them); evaluation's are, and gather_for_metrics drops the repeats.
    accelerator.even_batches = False
    train_dl = accelerator.prepare(train_dl)
    accelerator.even_batches = True
    model, optimizer, eval_dl, lr_scheduler = accelerator.prepare(model, optimizer, eval_dl, lr_scheduler)
    forward = compile_model(model) if args.compile else model  # `model` stays the plain module that is saved
    masker = (DynamicMasker(len(tokenizer), args.mlm_probability,
                            continuation_ids(tokenizer) if args.whole_word_masking else None)
              if args.masking == "dynamic" else None)
    stand_in = {key: value.to(accelerator.device) for key, value in collate_batch([data["train"][0]]).items()}
    run = dict(steps_per_epoch=steps_per_epoch, total_steps=total_steps, batch_size=args.batch_size,
               gradient_accumulation_steps=args.gradient_accumulation_steps, num_processes=accelerator.num_processes)
    if args.report_to == "tensorboard":
        accelerator.init_trackers("minibert", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                      for k, v in args.card_fields().items()})

    state = resume(accelerator, args, output_dir, run)
    global_step = state.get("step", 0)
    budget.start(state.get("elapsed_seconds", 0.0))
    start_epoch, skip = divmod(global_step, steps_per_epoch)
    skip *= args.gradient_accumulation_steps
    if global_step and skip == 0:  # resumed at the end of an epoch: finish it (eval, epoch-N/) with no batches
        start_epoch, skip = start_epoch - 1, layout.per_process
    if budget.done(global_step):  # resumed after the last step: no batches at all, only what follows the run
        skip = layout.per_process
    eval_due = EvalSchedule(args.eval_steps, budget, global_step)
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator, steps_per_epoch, truncate_after=global_step)
    meter = TrainMeter(log, accelerator, args, budget, global_step)
    metrics = None

    for epoch in range(start_epoch, num_epochs):
        model.train()
        train_dl.set_epoch(epoch)
        batches = iter(accelerator.skip_first_batches(train_dl, skip) if skip else train_dl)
        for index in range(skip, layout.per_process):
            micro_batch = index * accelerator.num_processes + accelerator.process_index
            batch = next(batches, None)
            real = batch is not None
            if not real:  # this process has no micro-batch left for this step: a stand-in that counts for nothing
                batch = stand_in
            torch.manual_seed(micro_batch_seed(args.seed, epoch, micro_batch))  # dropout and dynamic masks
            if args.short_phase_length and budget.progress(global_step) < args.short_phase_share:
                batch = truncate_pairs(batch, args.short_phase_length, COMPILE_LENGTH_STEP if args.compile else None)
            if masker is not None:
                masker.mlm_probability = mlm_probability_at(budget.progress(global_step), args.mlm_probability,
                                                            args.mlm_probability_end)
                batch = masker(batch)
            last = layout.is_last_of_step(index)
            with contextlib.nullcontext() if last else accelerator.no_sync(model):  # gradients sync at the last
                outputs = forward(**batch)
                # loss = mlm_loss + nsp_loss; --nsp-loss-weight w trains on mlm_loss + w * nsp_loss
                loss = outputs.loss + (args.nsp_loss_weight - 1.0) * outputs.nsp_loss
                accelerator.backward(loss * (layout.loss_weight(index) if real else 0.0))
            if real:
                meter.add(outputs, batch)
            if not last:
                continue
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
            if torch.isfinite(grad_norm):  # NaN/inf anywhere (any process, any micro-batch) skips the step
                optimizer.step()
            budget.tick()
            lr_scheduler.step()
            optimizer.zero_grad()
            global_step += 1
            meter.step_done(global_step, grad_norm, lr_scheduler.get_last_lr()[0])
            if global_step % RELEASE_MEMORY_EVERY == 0:
                release_freed_memory()
            if eval_due(global_step):
                metrics = evaluate_and_log(forward, eval_dl, accelerator, log, global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, budget.state(run), args.save_total_limit)
            if budget.done(global_step):
                break
        skip = 0
        if global_step % steps_per_epoch == 0 or budget.done(global_step):  # the epoch ran to its end
            if not (metrics and metrics["step"] == global_step):
                metrics = evaluate_and_log(forward, eval_dl, accelerator, log, global_step)
            if global_step % steps_per_epoch == 0:
                save_model(accelerator, model, tokenizer, output_dir / f"epoch-{epoch + 1}", args, data, metrics)
        if budget.done(global_step):
            break

    meter.close()
    if metrics is None or metrics["step"] != global_step:  # e.g. resumed after the last step
        metrics = evaluate_and_log(forward, eval_dl, accelerator, log, global_step)
    if args.checkpointing_steps and not (output_dir / "checkpoints" / f"step-{global_step}").exists():
        save_checkpoint(accelerator, output_dir, global_step, budget.state(run), args.save_total_limit)
    final = save_model(accelerator, model, tokenizer, output_dir / "final", args, data, metrics)
    if args.report_to == "tensorboard":
        accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        from .hub import push_to_hub

        push_to_hub(final, args.hub_model_id, private=args.hub_private)
    accelerator.wait_for_everyone()
    return {key: metrics[f"eval_{key}"] for key in METRIC_KEYS} | {"step": global_step, "final": str(final)}


@torch.no_grad()
def evaluate(model, dataloader, accelerator) -> dict:
    """Loss, MLM/NSP loss and accuracy, and MLM perplexity over a whole (prepared) dataloader.

    MLM numbers average over target tokens, NSP numbers over examples; `loss` = mlm_loss + nsp_loss, the training
    objective. `mlm_accuracy_at_mask` counts only the targets whose input is [MASK] (80% of them): the positions a
    user fills, where copying the input cannot help. Per-example sums are gathered with `gather_for_metrics`, which
    drops the samples repeated to even out the last batch across processes, so the result is the same with any
    number of processes.
    """
    was_training = model.training
    model.eval()
    # per example: mlm loss sum, targets, correct targets, [MASK] targets, correct [MASK] targets, nsp loss, nsp correct
    totals = torch.zeros(7, dtype=torch.float64)
    examples = 0
    for batch in dataloader:
        outputs = model(**batch)
        labels = batch["labels"]
        targets = labels != -100
        target_ids = labels[targets]
        at_mask = (batch["input_ids"][targets] == MASK_ID).float()
        row_of_target = targets.nonzero()[:, 0]  # prediction_logits is sparse: one row per target, row-major
        logits = outputs.prediction_logits.float()
        correct = (logits.argmax(-1) == target_ids).float()

        def per_row(values):  # (num_targets,) -> (batch,): summed over each row's targets
            return torch.zeros(labels.shape[0], device=labels.device).index_add_(0, row_of_target, values)

        nsp_logits = outputs.seq_relationship_logits.float()
        nsp_label = batch["next_sentence_label"].view(-1)
        per_example = torch.stack([
            per_row(F.cross_entropy(logits, target_ids, reduction="none")), targets.sum(1).float(), per_row(correct),
            per_row(at_mask), per_row(correct * at_mask),
            F.cross_entropy(nsp_logits, nsp_label, reduction="none"), (nsp_logits.argmax(-1) == nsp_label).float(),
        ], dim=1)
        per_example = accelerator.gather_for_metrics(per_example)
        totals += per_example.double().sum(0).cpu()
        examples += per_example.shape[0]
    model.train(was_training)
    mlm_loss_sum, num_targets, mlm_correct, num_masked, masked_correct, nsp_loss_sum, nsp_correct = totals.tolist()
    num_targets, examples = max(num_targets, 1), max(examples, 1)
    mlm_loss, nsp_loss = mlm_loss_sum / num_targets, nsp_loss_sum / examples
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_accuracy": mlm_correct / num_targets, "mlm_accuracy_at_mask": masked_correct / max(num_masked, 1),
            "nsp_accuracy": nsp_correct / examples, "perplexity": math.exp(min(mlm_loss, 50.0))}


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
    from .pretraining_csv import load_pretraining_csv, longest_row

    train_files = args.train_file
    if not train_files:
        from .pretraining_data import prepare_default_data

        data_dir = prepare_default_data(vocab_size=args.vocab_size, max_seq_length=args.max_seq_length,
                                        dupe_factor=args.dupe_factor)
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
    longest = max(longest_row(train), longest_row(test))
    return dict(train=train, test=test, tokenizer=tokenizer, info=info, longest=longest, train_files=train_files)


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


# Compiled models see padded lengths in steps of this many tokens: a few graphs instead of one per length.
COMPILE_LENGTH_STEP = 32


def compile_model(model):
    """torch.compile (inductor, a graph per padded length), with the one dynamo option the model needs for a single
    graph: the sparse MLM head gathers the targets, a count that depends on the batch's data. Applied after
    accelerator.prepare, so checkpoints hold the plain module's weights."""
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    return torch.compile(model, dynamic=False)


def make_dataloaders(data, args):
    from functools import partial

    from torch.utils.data import DataLoader

    collate = partial(collate_batch, pad_to_multiple_of=COMPILE_LENGTH_STEP) if args.compile else collate_batch
    train_dl = DataLoader(data["train"], batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                          num_workers=args.num_workers)
    eval_dl = DataLoader(data["test"], batch_size=args.eval_batch_size or 2 * args.batch_size, shuffle=False,
                         collate_fn=collate, num_workers=args.num_workers)
    return train_dl, eval_dl


def parameter_groups(model, weight_decay):
    """Weight decay on matrices only: biases and LayerNorm weights (1-D) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class StepLayout:
    """Which micro-batches make each optimizer step, and how much each one's loss counts.

    An epoch has `num_batches` micro-batches, numbered 0, 1, ...; process p takes micro-batches p, p + P, p + 2P, ...
    (accelerate's sharding with `even_batches=False`), so it has `per_process` = ceil(num_batches / P) slots, the
    last ones possibly empty. Step s is slots s*A .. s*A + A - 1 of every process (A = gradient accumulation), i.e.
    micro-batches s*A*P .. (s+1)*A*P - 1: the same ones as 1 process with accumulation A*P. Each real micro-batch's
    loss is weighted P / (the step's real micro-batches), so after DDP averages over the P processes the gradient
    is the mean over the step's micro-batches, with any number of processes and for a short last step too.
    """

    def __init__(self, num_batches: int, num_processes: int, accumulation: int):
        self.num_batches, self.num_processes, self.accumulation = num_batches, num_processes, accumulation
        self.per_process = math.ceil(num_batches / num_processes)
        self.steps_per_epoch = math.ceil(self.per_process / accumulation)

    def is_last_of_step(self, slot: int) -> bool:
        return (slot + 1) % self.accumulation == 0 or slot + 1 == self.per_process

    def loss_weight(self, slot: int) -> float:
        first = slot // self.accumulation * self.accumulation * self.num_processes
        real = min(self.num_batches, first + self.accumulation * self.num_processes) - first
        return self.num_processes / real


def warmup_then_linear_decay(progress: float, warmup: float) -> float:
    """The learning-rate factor at `progress` (0 at the start, 1 at the end of the run): a linear warm-up over the
    first `warmup` of the run, then a linear decay that reaches 0 exactly at the end."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


# The clock a time budget reads (a test puts a fake one here).
clock = time.monotonic


class Budget:
    """How far the run is, 0..1: by optimizer steps (`total_steps`), or, with a time budget, by elapsed training
    time when that is further along (Cramming's budgeted schedules). The learning-rate schedule follows it and the
    run stops at 1, so a budgeted run ends on time on any machine (and is not bit-reproducible: where it stops
    depends on the machine's speed; fixed-step runs resume exactly). Every process uses the main process's clock.
    """

    def __init__(self, total_steps: int, minutes: float | None, accelerator):
        self.total_steps, self.accelerator = total_steps, accelerator
        self.seconds = None if minutes is None else 60.0 * minutes
        self.elapsed_before, self.started, self.elapsed = 0.0, None, 0.0

    def start(self, elapsed_before: float = 0.0) -> None:
        """Start (or, resumed, continue) the clock."""
        self.elapsed_before, self.started, self.elapsed = float(elapsed_before), clock(), float(elapsed_before)

    def tick(self) -> None:
        """Read the clock, once per optimizer step; with a time budget every process takes the main one's reading."""
        self.elapsed = self.elapsed_before + clock() - self.started
        if self.seconds is not None and self.accelerator.num_processes > 1:
            elapsed = torch.tensor([self.elapsed * self.accelerator.is_main_process], device=self.accelerator.device)
            self.elapsed = float(self.accelerator.reduce(elapsed, reduction="sum"))

    def progress(self, step: int) -> float:
        by_steps = step / self.total_steps
        return by_steps if self.seconds is None else max(by_steps, self.elapsed / self.seconds)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0

    def state(self, run: dict) -> dict:
        """What a checkpoint records: the batch layout and the training time so far."""
        return {**run, "elapsed_seconds": round(self.elapsed, 3)}


class EvalSchedule:
    """When to evaluate: every `every` steps, or, for `every` below 1, at the first step past each multiple of that
    share of the run as the budget measures it (0.25: at 25, 50, 75 and 100% of the steps or of the time budget).
    Resumed at `step`, the shares already passed are not repeated."""

    def __init__(self, every: float, budget: Budget, step: int):
        self.every, self.budget = every, budget
        self.passed = self._shares(step) if 0 < every < 1 else 0

    def _shares(self, step: int) -> int:
        return math.floor(min(self.budget.progress(step), 1.0) / self.every + 1e-9)

    def __call__(self, step: int) -> bool:
        if self.every >= 1:
            return step % int(self.every) == 0
        if self.every <= 0:
            return False
        shares = self._shares(step)
        due, self.passed = shares > self.passed, shares
        return due


def mlm_probability_at(progress: float, start: float, end: float | None) -> float:
    """The dynamic-masking rate at `progress` (0..1 of the run, as the learning-rate schedule sees it): `start`
    throughout, or, with `end`, falling linearly from `start` to `end` (more context per target late in training)."""
    return start if end is None else start + (end - start) * min(progress, 1.0)


def micro_batch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of micro-batch `index` (numbered across processes) of `epoch`: independent of how we got there."""
    digest = hashlib.sha256(f"minibert:{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# -------------------------------------------------------------------------------------------- saving and logging


# Batches of varying length leave freed blocks in glibc's heap that it keeps rather than returns: without a release,
# 1200 bare training steps of the mini preset grew from 0.45 to 2.7 GB resident; released every 100 steps they stay
# near 0.6 GB (a whole pretrain.py run at 0.7-1.2 GB) at no measurable cost (101.6 s against 100.5 s for the 1200
# steps; a fixed mmap threshold instead cost 37%).
RELEASE_MEMORY_EVERY = 100


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, Windows, musl)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Give the memory the C allocator holds after tensors were freed back to the system; False where it cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def save_model(accelerator, model, tokenizer, folder, args, data, metrics) -> Path:
    """OUTPUT/epoch-N/ or OUTPUT/final/: the model folder, with a card of this run's data, options and metrics."""
    from .model_folder import save_model_folder

    state_dict = accelerator.get_state_dict(model)  # on every process (FSDP gathers the shards)
    if accelerator.is_main_process:
        card = dict(metrics={k.removeprefix("eval_"): v for k, v in (metrics or {}).items()
                             if k.startswith("eval_") or k in ("step", "epoch")},  # the card says when: step N
                    data_info=data["info"], training_args=args.card_fields(),
                    loss_curve=Path(args.output_dir) / "loss_curve.png",
                    model_name=Path(args.output_dir).resolve().name, repo_id=args.hub_model_id)
        save_model_folder(accelerator.unwrap_model(model), tokenizer, folder, card=card, state_dict=state_dict)
    accelerator.wait_for_everyone()
    return Path(folder)


class TrainMeter:
    """Training-side bookkeeping: running loss/token sums between log lines (summed over processes when
    written), the progress bar, and the count of steps skipped for a NaN/inf gradient (abort after a few in a row)."""

    def __init__(self, log, accelerator, args, budget, initial_step):
        from tqdm.auto import tqdm

        self.log, self.accelerator, self.logging_steps = log, accelerator, args.logging_steps
        self.learning_rate = args.learning_rate
        # loss, mlm_loss, nsp_loss, finite micro-batches, tokens: summed on the device, read at logging steps only
        self.window = torch.zeros(5, dtype=torch.float32, device=accelerator.device)
        self.started = time.perf_counter()
        self.skipped, self.skipped_in_a_row = 0, 0
        # the bar counts steps, or with a time budget the seconds of it spent (the steps it will take are unknown)
        self.timed = budget if budget.seconds is not None else None
        total, initial = ((round(budget.seconds), min(round(budget.elapsed), round(budget.seconds))) if self.timed
                          else (budget.total_steps, initial_step))
        timed_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"
        self.progress = tqdm(total=total, initial=initial, desc="pretraining", unit="s" if self.timed else "step",
                             bar_format=timed_format if self.timed else None, dynamic_ncols=True,
                             disable=not (accelerator.is_main_process and args.progress))

    def add(self, outputs, batch):
        """Add one micro-batch (a NaN/inf loss counts for nothing), without waiting for the device."""
        finite = torch.isfinite(outputs.loss.detach())
        values = torch.stack([outputs.loss.detach(), outputs.mlm_loss.detach(), outputs.nsp_loss.detach(),
                              torch.ones_like(outputs.loss.detach()),
                              batch["attention_mask"].sum().to(outputs.loss.dtype)]).float()
        self.window += torch.where(finite, values, torch.zeros_like(values))

    def step_done(self, step, grad_norm, learning_rate):
        if self.timed:
            self.progress.update(min(round(self.timed.elapsed), self.progress.total) - self.progress.n)
        else:
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
            sums = self.accelerator.reduce(self.window, reduction="sum").double().cpu().tolist()
            mean = (lambda total: total / sums[3]) if sums[3] else (lambda total: None)  # None: every loss NaN
            record = self.log.write(step=step, train_loss=mean(sums[0]), train_mlm_loss=mean(sums[1]),
                                    train_nsp_loss=mean(sums[2]), learning_rate=learning_rate,
                                    grad_norm=grad_norm.item() if torch.isfinite(grad_norm) else None,
                                    skipped_steps=self.skipped,
                                    tokens_per_second=sums[4] / (time.perf_counter() - self.started))
            if record["train_loss"] is not None:
                self.progress.set_postfix(**({"step": step} if self.timed else {}), loss=f"{record['train_loss']:.3f}",
                                          tok_s=f"{record['tokens_per_second']:.0f}")
            self.window.zero_()
            self.started = time.perf_counter()

    def close(self):
        self.progress.close()
