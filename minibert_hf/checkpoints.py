"""Resumable training state: ``OUTPUT/checkpoints/step-N/`` (accelerate's ``save_state`` plus our step counter).

A checkpoint is written under a temporary name by every process and renamed by the main one when complete, so
``--resume-from-checkpoint latest`` only ever sees whole checkpoints. Nothing is unpickled: weights are safetensors,
accelerate loads optimizer/scheduler/RNG state with ``torch.load(weights_only=True)``, and our state is JSON.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .atomic import remove, replace, temporary_name
from .errors import MiniBertInputError, UserError
from .model_folder import quiet_saving


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
    """accelerator.save_state into checkpoints/.tmp-step-N (all processes), then the main process renames it to
    step-N with ``run`` (the batch layout, training time so far) in training_state.json; keep the newest
    ``save_total_limit``."""
    folder = Path(output_dir) / "checkpoints" / f"step-{step}"
    tmp = temporary_name(folder)  # the same name in every process
    if accelerator.is_main_process:
        remove(tmp)
    accelerator.wait_for_everyone()
    try:
        with quiet_saving():
            accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / "training_state.json").write_text(json.dumps({"step": step, **run}, indent=2), encoding="utf-8")
            replace(tmp, folder)
    except BaseException:  # Ctrl-C or an error mid-save: no half-written checkpoint is left behind
        if accelerator.is_main_process:
            remove(tmp)
        raise
    if accelerator.is_main_process and save_total_limit:
        for stale in list_checkpoints(output_dir)[:-save_total_limit]:
            remove(stale)
    accelerator.wait_for_everyone()
    return folder


def resume(accelerator, args, output_dir: Path, run: dict) -> int:
    """Restore model, optimizer, scheduler and RNG from a checkpoint; return its training_state.json (``step``: the
    optimizer step to continue from, ``elapsed_seconds``: training time so far), or ``{}`` to start afresh."""
    if not args.resume_from_checkpoint:
        return {}
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            accelerator.print(f"No checkpoint in {output_dir / 'checkpoints'} yet: starting from step 0.")
            return {}
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
    return state


def clear_previous_run(output_dir: Path) -> None:
    """--overwrite-output-dir: delete the previous run's checkpoints and model folders, so that nothing of it can be
    taken for the new run's."""
    output_dir = Path(output_dir)
    for old in [output_dir / "checkpoints", output_dir / "final", *output_dir.glob("epoch-*")]:
        remove(old)
