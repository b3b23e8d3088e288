"""Ask a pretrained MiniBERT the two pretraining questions: does sentence B follow sentence A, and which words
belong where the ``[MASK]`` tokens are.

The course lab's ``predict_nsp`` / ``predict_mlm`` done right: the tokenizer is the one the model was trained with,
inputs are batch-first, sentence pairs get their segment ids from ``tokenizer(a, b)``, and every ``[MASK]`` is
filled. Both functions take a model loaded any way (the package classes, or ``AutoModelForPreTraining`` /
``AutoModelForMaskedLM`` with ``trust_remote_code=True``) and run on the model's device.

Load a model folder or Hub repo with :func:`minibert_hf.model_folder.load_model` (one clear error for a bad one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .errors import MiniBertInputError

class NSPResult(NamedTuple):
    """``is_next``: the model thinks B follows A; ``probability``: its probability that B follows A (0..1)."""

    is_next: bool
    probability: float

    def sentence(self) -> str:
        """The answer in the course lab's words."""
        return "The second sentence follows the first." if self.is_next else \
            "The second sentence does not follow the first."


@dataclass
class MaskPrediction:
    """The candidates for one ``[MASK]``: ``(token, probability)`` pairs, most likely first."""

    position: int  # index of the [MASK] in the tokenized input (0 is [CLS])
    candidates: list[tuple[str, float]]

    @property
    def token(self) -> str:
        return self.candidates[0][0]

    @property
    def probability(self) -> float:
        return self.candidates[0][1]


@dataclass
class MLMResult:
    """``sentence``: the input with every ``[MASK]`` replaced by the top candidate; ``masks``: one entry per mask,
    left to right. ``str(result)`` is the filled sentence."""

    sentence: str
    masks: list[MaskPrediction] = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        return [mask.token for mask in self.masks]

    def __str__(self) -> str:
        return self.sentence


# --------------------------------------------------------------------------------------------- helpers


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _max_length(model, tokenizer) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None)]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and tok_limit < 10**6:  # transformers uses a huge int for "no limit"
        limits.append(tok_limit)
    limits = [limit for limit in limits if isinstance(limit, int) and limit > 0]
    return min(limits) if limits else 10**9


def _encode(model, tokenizer, text, text_pair=None) -> dict:
    """Tokenize one input (or pair), check its length against the model, move it to the model's device."""
    encoded = tokenizer(text, text_pair, return_tensors="pt", return_token_type_ids=True,
                        return_attention_mask=True)
    length = encoded["input_ids"].shape[1]
    limit = _max_length(model, tokenizer)
    if length > limit:
        what = "the two sentences are" if text_pair is not None else "the sentence is"
        raise MiniBertInputError(f"{what} {length} tokens long with [CLS]/[SEP]; this model takes at most "
                                 f"{limit} tokens")
    device = _device(model)
    return {name: encoded[name].to(device) for name in ("input_ids", "token_type_ids", "attention_mask")}


def _run(model, inputs):
    """Forward in eval mode without gradients, restoring the model's train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(**inputs, return_dict=True)
    finally:
        model.train(was_training)


def _check_text(text, what: str) -> str:
    if not isinstance(text, str):
        raise MiniBertInputError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise MiniBertInputError(f"{what} is empty")
    return text


# --------------------------------------------------------------------------------------------- NSP


def predict_nsp(sentence_a: str, sentence_b: str, model, tokenizer) -> NSPResult:
    """Does ``sentence_b`` follow ``sentence_a``? Returns ``(is_next, probability that B follows A)``.

    The NSP head's logits are softmaxed; index 0 is "B follows A" (BERT's convention). The model must have an
    NSP head: ``MiniBertForPreTraining`` or ``AutoModelForPreTraining`` (with ``trust_remote_code=True``).
    """
    _check_text(sentence_a, "sentence A")
    _check_text(sentence_b, "sentence B")
    outputs = _run(model, _encode(model, tokenizer, sentence_a, sentence_b))
    logits = getattr(outputs, "seq_relationship_logits", None)
    if logits is None and "NextSentence" in type(model).__name__:
        logits = outputs.logits
    if logits is None:
        raise MiniBertInputError(f"{type(model).__name__} has no next-sentence head; load the model with "
                                 "AutoModelForPreTraining (or MiniBertForPreTraining)")
    probability = torch.softmax(logits[0].float(), dim=-1)[0].item()
    return NSPResult(is_next=probability >= 0.5, probability=probability)


# --------------------------------------------------------------------------------------------- MLM


def predict_mlm(sentence: str, model, tokenizer, top_k: int = 5) -> MLMResult:
    """Fill every ``[MASK]`` in ``sentence``; return the filled sentence and the ``top_k`` candidates per mask.

    Candidates never include special tokens ([PAD], [CLS], [SEP], [MASK], [UNK]); their probabilities are
    the model's softmax over the whole vocabulary. Each mask is predicted independently, in one forward pass.
    Works with a model that has an MLM head: ``MiniBertForPreTraining`` (called without labels, so its
    logits cover every position), ``MiniBertForMaskedLM``, or their Auto classes.
    """
    _check_text(sentence, "the sentence")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise MiniBertInputError(f"top_k (--top-k) must be a positive integer, got {top_k!r}")
    mask_token, mask_id = tokenizer.mask_token, tokenizer.mask_token_id
    if mask_token is None or mask_id is None:
        raise MiniBertInputError("the tokenizer has no mask token")

    inputs = _encode(model, tokenizer, sentence)
    positions = (inputs["input_ids"][0] == mask_id).nonzero().flatten().tolist()
    if not positions:
        hint = f" (write {mask_token} exactly, in capitals)" if mask_token.lower() in sentence.lower() else ""
        raise MiniBertInputError(f"the sentence has no {mask_token} to fill{hint}: {sentence!r}")
    outputs = _run(model, inputs)
    logits = getattr(outputs, "prediction_logits", None)
    if logits is None:
        logits = getattr(outputs, "logits", None)
    if logits is None or logits.dim() != 3:
        raise MiniBertInputError(f"{type(model).__name__} has no masked-language-modelling head; load the model "
                                 "with AutoModelForPreTraining or AutoModelForMaskedLM")

    probabilities = torch.softmax(logits[0, positions].float(), dim=-1)  # (num_masks, vocab)
    special = [i for i in tokenizer.all_special_ids if 0 <= i < probabilities.shape[-1]]
    ranking = probabilities.clone()
    ranking[:, special] = -1.0
    k = min(top_k, probabilities.shape[-1] - len(set(special)))
    best = ranking.topk(k, dim=-1).indices  # (num_masks, k)
    masks = []
    for row, position in enumerate(positions):
        ids = best[row].tolist()
        tokens = tokenizer.convert_ids_to_tokens(ids)
        masks.append(MaskPrediction(position, [(t, probabilities[row, i].item()) for t, i in zip(tokens, ids)]))
    return MLMResult(sentence=_fill(sentence, mask_token, [m.token for m in masks], tokenizer, inputs), masks=masks)


def _fill(sentence: str, mask_token: str, tokens: list[str], tokenizer, inputs) -> str:
    """Replace the mask tokens of the original text in order, keeping the rest of the text as the user wrote it.

    A word-piece continuation (``##s``) is glued to the word before it. If the text's masks cannot be matched
    one-to-one with the tokenized masks, the sentence is rebuilt from the token ids instead.
    """
    pieces = sentence.split(mask_token)
    if len(pieces) - 1 != len(tokens):
        ids = inputs["input_ids"][0].tolist()
        filled = iter(tokenizer.convert_tokens_to_ids(tokens))
        ids = [next(filled) if i == tokenizer.mask_token_id else i for i in ids]
        return tokenizer.decode(ids, skip_special_tokens=True)
    out = pieces[0]
    for token, rest in zip(tokens, pieces[1:]):
        if token.startswith("##"):
            out = out.rstrip() + token[2:]
        else:
            out += token
        out += rest
    return out


__all__ = ["MLMResult", "MaskPrediction", "NSPResult", "predict_mlm", "predict_nsp"]
