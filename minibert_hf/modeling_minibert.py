"""MiniBERT: a small BERT for masked-language modelling (MLM) and next-sentence prediction (NSP).

Read top to bottom: embeddings, one encoder layer, the encoder model, then the heads. Batches follow Hugging Face
BERT conventions, batch first:

    input_ids        (batch, seq)  token ids, 0 = [PAD]
    token_type_ids   (batch, seq)  0 = sentence A (with [CLS] and its [SEP]), 1 = sentence B
    attention_mask   (batch, seq)  1 = real token, 0 = padding
    labels           (batch, seq)  MLM target id, -100 = not a target
    next_sentence_label (batch,)   0 = B follows A, 1 = B is a random sentence

This file travels with every checkpoint, so it imports only torch, transformers and its configuration.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from .configuration_minibert import MiniBertConfig


def sinusoidal_positions(position_ids, dim):
    """Fixed position vectors of "Attention Is All You Need": sin on even features, cos on odd ones.

    position_ids (..., seq) -> (..., seq, dim). Computed on the fly: there is nothing to learn or to save.
    """
    frequencies = torch.exp(torch.arange(0, dim, 2, device=position_ids.device) * (-math.log(10000.0) / dim))
    angles = position_ids.unsqueeze(-1).float() * frequencies  # (..., seq, dim / 2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleave: sin, cos, sin, cos, ...


def rotary_tables(position_ids, head_dim, theta):
    """cos and sin of RoPE's angles, each (batch or 1, seq, 1, 1, head_dim) for position_ids (batch or 1, seq).

    Feature pair (i, i + head_dim / 2) turns by position * theta ** (-2i / head_dim); each table holds the pair's
    angle at both features, the sine negated at the first, so `rotate` is two products and a sum. Computed once per
    forward and shared by all layers; the singleton axes broadcast over (query|key, heads).
    """
    frequencies = theta ** (-torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids.float()[..., None, None, None] * frequencies  # (batch or 1, seq, 1, 1, head_dim / 2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate(x, cos, sin):
    """Apply RoPE to x (batch, seq, ..., head_dim) with the tables of `rotary_tables`: each feature pair
    (x_i, x_j), j = i + head_dim / 2, becomes (x_i cos - x_j sin, x_j cos + x_i sin)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * sin


def dropout(x, p, training):
    """Dropout: zero each element with probability p and scale the rest by 1 / (1 - p), as F.dropout does.

    On the CPU, torch's own dropout draws a random number per element, and at this model's sizes that costs as much
    as a matrix product. Here one 64-bit draw gives the mask of four elements (15 random bits each, p rounded to a
    multiple of 1/32768), about three times faster, from the same seeded generator. Elsewhere, and under
    torch.compile, torch's fused kernel.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, True)
    threshold = round(p * 32768)
    if threshold >= 32768:
        return x * 0.0
    draws = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
    bits = draws.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF  # uniform in [0, 32768)
    scale = (bits >= threshold).to(torch.promote_types(x.dtype, torch.float32))
    scale.mul_(32768 / (32768 - threshold))  # 0 where dropped, 1 / (1 - p) elsewhere: one factor for backward too
    return (x * scale).to(x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` above (still an nn.Dropout to anything that looks for one)."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


class Unpadded(NamedTuple):
    """Where the real tokens of a padded (batch, seq) batch are, to work on them alone, packed as (tokens, features).

    ``index`` holds their flat positions (row * seq + column).
    """

    index: torch.Tensor  # (tokens,)
    batch: int
    seq: int

    @classmethod
    def from_mask(cls, attention_mask):
        """From a (batch, seq) attention mask, 1 = real token."""
        return cls(attention_mask.reshape(-1).nonzero().squeeze(1), *attention_mask.shape)

    def pack(self, states):
        """(batch, seq, features) -> (tokens, features): the real tokens only."""
        return states.reshape(self.batch * self.seq, -1).index_select(0, self.index)

    def pad(self, tokens):
        """(tokens, features) -> (batch, seq, features): put the real tokens back in place, zeros at padding."""
        padded = tokens.new_zeros(self.batch * self.seq, tokens.shape[-1]).index_copy(0, self.index, tokens)
        return padded.view(self.batch, self.seq, -1)


class MiniBertEmbeddings(nn.Module):
    """Token + position + segment embeddings, then LayerNorm and dropout (each added once; no position vectors
    with rotary positions)."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.config = config

    def forward(self, input_ids, token_type_ids=None, position_ids=None, index=None):
        """(batch, seq, hidden); with ``index`` (``Unpadded.index``) only the real tokens: (tokens, hidden)."""
        batch, seq_length = input_ids.shape
        if seq_length > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq_length} exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings}) of this model")
        if position_ids is None:
            position_ids = torch.arange(seq_length, device=input_ids.device).unsqueeze(0)  # (1, seq)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if index is not None:
            input_ids = input_ids.reshape(-1)[index]
            position_ids = position_ids.expand(batch, seq_length).reshape(-1)[index]
            token_type_ids = token_type_ids.reshape(-1)[index]
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        if self.config.position_embedding_type == "learned":
            embeddings = embeddings + self.position_embeddings(position_ids)
        elif self.config.position_embedding_type == "sinusoidal":
            embeddings = embeddings + sinusoidal_positions(position_ids, self.config.hidden_size)
        # rotary: positions enter in the attention (rotary_tables), not here
        return self.dropout(self.LayerNorm(embeddings))  # (batch, seq, hidden)


class MiniBertSelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, hidden_states, mask=None, output_attentions=False, unpadded=None, rotary=None, keep=None):
        """hidden_states (batch, seq, hidden); mask (batch, 1, 1, seq) bool, True = may be attended to.

        With ``unpadded`` (an :class:`Unpadded`) hidden_states holds only the real tokens, (tokens, hidden): they are
        projected as they are and put in place (zeros at padding) only for the attention itself.
        ``rotary``: the (cos, sin) of `rotary_tables`, applied to queries and keys together.
        ``keep``: indices of the rows of hidden_states, flattened to (rows, hidden), whose outputs are needed: only
        their queries are attended with (every token is still a key and value), and (kept, hidden) comes out.
        """
        qkv = self.qkv(hidden_states)
        if unpadded is not None:
            qkv = unpadded.pad(qkv)
        batch, seq, hidden = qkv.shape[0], qkv.shape[1], hidden_states.shape[-1]
        query, key, value = qkv.view(batch, seq, 3, self.num_heads, self.head_dim).unbind(2)  # (batch, seq, heads, dim)
        if rotary is not None:
            query, key = rotate(torch.stack((query, key), 2), *rotary).unbind(2)
        # Each (batch, heads, seq, head_dim); transposed last, their gradients are stacked back into qkv's layout
        # in one copy (a permute of qkv would need a second one).
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if keep is not None:  # the kept queries, packed to the left of each row: (batch, heads, most kept, head_dim)
            where = keep if unpadded is None else unpadded.index[keep]  # flat positions row * seq + column
            rows, columns = where // seq, where % seq
            counts = torch.bincount(rows, minlength=batch)
            slots = torch.arange(len(where), device=where.device) - (counts.cumsum(0) - counts)[rows]
            packed = query.new_zeros(batch, self.num_heads, int(counts.max()), self.head_dim)
            packed[rows, :, slots] = query[rows, :, columns]
            query = packed
        dropout_prob = self.dropout_prob if self.training else 0.0
        # On the CPU, SDPA draws its dropout mask the slow way (see `dropout`), so dropout there takes the explicit
        # computation too; otherwise it runs only when the attention weights themselves are asked for.
        cpu_dropout = dropout_prob > 0 and query.device.type == "cpu" and not torch.compiler.is_compiling()
        if output_attentions or cpu_dropout:
            scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)  # (batch, heads, seq, seq)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            context = dropout(weights, dropout_prob, self.training) @ value
            weights = weights if output_attentions else None
        else:
            weights = None
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_prob)
        if keep is not None:
            return context[rows, :, slots].reshape(-1, hidden), weights  # (kept, hidden)
        context = context.transpose(1, 2).reshape(batch, seq, hidden)
        if unpadded is not None:
            context = unpadded.pack(context)
        return context, weights


class MiniBertLayer(GradientCheckpointingLayer):
    """One encoder block: attention and a feed-forward network, each wrapped in a residual connection.

    Post-LN (BERT) normalises after each addition; pre-LN normalises each sublayer's input and leaves the residual
    stream alone, which trains stably at higher learning rates (the model then ends with one more LayerNorm).
    With ``model.gradient_checkpointing_enable()`` (transformers' mechanism, through the base class) a block keeps
    only its input during the forward pass and recomputes the rest in the backward pass.
    """

    def __init__(self, config):
        super().__init__()
        self.pre_norm = config.layer_norm_position == "pre"
        self.attention = MiniBertSelfAttention(config)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def feed_forward(self, hidden_states):
        return self.dropout(self.output(self.activation(self.intermediate(hidden_states))))

    def forward(self, hidden_states, mask=None, output_attentions=False, unpadded=None, rotary=None, keep=None):
        """``keep``: indices of the rows of hidden_states, flattened to (rows, hidden), whose outputs are needed;
        the block computes those alone, (kept, hidden), reading every token as a key and value."""

        def kept(states):  # (..., hidden) -> (kept, hidden)
            return states if keep is None else states.reshape(-1, states.shape[-1]).index_select(0, keep)

        if self.pre_norm:
            context, weights = self.attention(self.attention_LayerNorm(hidden_states), mask, output_attentions,
                                              unpadded, rotary, keep)
            hidden_states = kept(hidden_states) + self.dropout(self.attention_output(context))
            hidden_states = hidden_states + self.feed_forward(self.output_LayerNorm(hidden_states))
        else:
            context, weights = self.attention(hidden_states, mask, output_attentions, unpadded, rotary, keep)
            hidden_states = self.attention_LayerNorm(kept(hidden_states)
                                                     + self.dropout(self.attention_output(context)))
            hidden_states = self.output_LayerNorm(hidden_states + self.feed_forward(hidden_states))
        return hidden_states, weights


class MiniBertPooler(nn.Module):
    """BERT's pooler: dense + tanh on the [CLS] vector, (batch, seq, hidden) -> (batch, hidden)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        return torch.tanh(self.dense(hidden_states[:, 0]))


class MiniBertPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading/saving shared by every MiniBERT model."""

    config_class = MiniBertConfig
    base_model_prefix = "minibert"
    supports_gradient_checkpointing = True
    # Transformers' defaults initialise our layers as BERT does: Linear and Embedding weights ~ N(0,
    # initializer_range), biases 0, the [PAD] embedding 0, LayerNorm weight 1 and bias 0.

    def get_output_embeddings(self):
        """The vocabulary projection of the MLM head (tied to the word embeddings); None for models without one."""
        lm_head = getattr(self, "lm_head", None)
        return None if lm_head is None else lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings


class MiniBertModel(MiniBertPreTrainedModel):
    """The encoder: embeddings and a stack of layers. Returns every token's vector and the [CLS] vector (through
    the pooler when config.use_pooler)."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = MiniBertEmbeddings(config)
        self.layers = nn.ModuleList(MiniBertLayer(config) for _ in range(config.num_hidden_layers))
        # Pre-LN blocks leave the residual stream unnormalised: one LayerNorm at the end.
        if config.layer_norm_position == "pre":
            self.final_LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = MiniBertPooler(config) if config.use_pooler else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, output_positions=None,
                **kwargs):
        """``output_positions`` (batch, seq) bool: the only positions whose output the caller reads. The last layer
        then computes just those (every token still serves as a key and value; its attention weights cover those
        queries alone, packed to the left of each row) and the last hidden state is zero elsewhere; pretraining
        passes its MLM targets and [CLS]."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict

        # Padding keys are hidden from every query; without padding the mask is dropped (faster attention).
        mask = unpadded = None
        compiling = torch.compiler.is_compiling()
        if attention_mask is not None and (compiling or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq)
            # Token-wise work (projections, feed-forward, LayerNorm, dropout) runs on the real tokens only,
            # packed as (tokens, hidden); they are put back in place (zeros at padding) for the attention.
            # Under torch.compile the batch stays padded: no decision on the host, no data-dependent shapes.
            unpadded = None if compiling else Unpadded.from_mask(attention_mask)

        layout = unpadded  # where the rows of hidden_states sit in the (batch, seq) grid; None: they are the grid

        def padded(states):
            return states if layout is None else layout.pad(states)

        keep = None  # the rows the last layer computes, and where they sit in the grid
        if output_positions is not None:
            wanted = output_positions.reshape(-1)
            keep = (wanted if unpadded is None else wanted[unpadded.index]).nonzero().squeeze(1)
            kept_layout = Unpadded(keep if unpadded is None else unpadded.index[keep], *input_ids.shape)

        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids,
                                        None if unpadded is None else unpadded.index)
        rotary = None
        if self.config.position_embedding_type == "rotary":  # one (cos, sin) pair for all layers
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, seq)
            head_dim = self.config.hidden_size // self.config.num_attention_heads
            rotary = rotary_tables(position_ids, head_dim, self.config.rope_theta)
        all_hidden_states = (padded(hidden_states),) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            hidden_states, weights = layer(hidden_states, mask, output_attentions, unpadded, rotary,
                                           keep if last else None)
            if last and keep is not None:
                layout = kept_layout
            if output_hidden_states:
                all_hidden_states += (padded(hidden_states),)
            if output_attentions:
                all_attentions += (weights,)
        if self.config.layer_norm_position == "pre":
            hidden_states = self.final_LayerNorm(hidden_states)
            if output_hidden_states:  # the last entry is the model's output, normalised (as in GPT-2)
                all_hidden_states = all_hidden_states[:-1] + (padded(hidden_states),)
        hidden_states = padded(hidden_states)
        pooled = hidden_states[:, 0] if self.pooler is None else self.pooler(hidden_states)  # (batch, hidden)

        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


class MiniBertLMHead(nn.Module):
    """Hidden vector -> a score for every word: dense + activation + LayerNorm, then the decoder.

    The decoder's weight is the word-embedding matrix itself (tied), so only its bias is the head's own.
    """

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states):  # (..., hidden) -> (..., vocab)
        return self.decoder(self.LayerNorm(self.activation(self.dense(hidden_states))))


class SummedCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits, targets, reduction="sum")`` for logits (targets, vocab), with a leaner backward.

    Torch's backward zero-fills a (targets, vocab) gradient, scatters into it and runs the log-softmax backward
    over it; here the saved log-probabilities become softmax minus one-hot in place, one pass over the matrix (the
    MLM loss's vocabulary-wide backward is a few percent of a small BERT's step). The gradient is the same.
    """

    @staticmethod
    def forward(ctx, logits, targets):
        log_probs = torch.log_softmax(logits, dim=-1)  # (targets, vocab)
        ctx.save_for_backward(log_probs, targets)
        return -log_probs.gather(1, targets[:, None]).sum()

    @staticmethod
    def backward(ctx, grad):
        log_probs, targets = ctx.saved_tensors
        grad_logits = log_probs.exp_()  # softmax, in place: a second backward through this graph raises
        grad_logits[torch.arange(len(targets), device=targets.device), targets] -= 1.0
        return grad_logits.mul_(grad), None


class MiniBertSegmentPairHead(nn.Module):
    """NSP from the two sentences: mean vectors a (A's tokens) and b (B's), then (a * b, |a - b|) -> dense + tanh
    -> 2 logits. Topic overlap between A and B shows up directly in a * b."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden_states, token_type_ids, attention_mask):  # (batch, seq, hidden) -> (batch, 2)
        real = attention_mask.bool()
        in_b = token_type_ids.bool() & real
        a, b = ((hidden_states * part[..., None]).sum(1) / part.sum(1, keepdim=True).clamp(min=1)
                for part in (real & ~in_b, in_b))  # each (batch, hidden)
        return self.classifier(torch.tanh(self.dense(torch.cat((a * b, (a - b).abs()), dim=-1))))


def make_nsp_head(config):
    """The NSP head config.nsp_input names: on the two sentences' mean vectors, or a linear layer on [CLS]."""
    return MiniBertSegmentPairHead(config) if config.nsp_input == "segments" else nn.Linear(config.hidden_size, 2)


def next_sentence_logits(nsp_head, encoded, input_ids, token_type_ids=None, attention_mask=None):
    """(batch, 2) NSP logits from the encoder's output, index 0 = B follows A."""
    if isinstance(nsp_head, MiniBertSegmentPairHead):
        return nsp_head(encoded.last_hidden_state,
                        torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids,
                        torch.ones_like(input_ids) if attention_mask is None else attention_mask)
    return nsp_head(encoded.pooler_output)


def classifier_dropout(config):
    """The dropout before a fine-tuning head: config.classifier_dropout, or the hidden dropout when unset."""
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def pool(config, encoded, input_ids, attention_mask=None):
    """One vector per sequence for a classifier, (batch, hidden): the [CLS] vector (through the pooler when
    config.use_pooler) or, with config.classifier_pooling = "mean", the mean of the real tokens' vectors."""
    if config.classifier_pooling == "mean":
        real = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).unsqueeze(-1).float()
        return (encoded.last_hidden_state * real).sum(1) / real.sum(1).clamp(min=1)
    return encoded.pooler_output


@dataclass
class MiniBertForPreTrainingOutput(ModelOutput):
    """The outputs of `BertForPreTraining` in its order (so `return_dict=False` tuples unpack alike), then the two
    parts of the loss.

    With `labels`, `prediction_logits` holds only the target positions: shape (num_targets, vocab), one row per
    `labels != -100` in row-major order, i.e. aligned with `labels[labels != -100]`. Without, (batch, seq, vocab).
    """

    loss: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    seq_relationship_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    mlm_loss: torch.FloatTensor | None = None
    nsp_loss: torch.FloatTensor | None = None


class MiniBertForPreTraining(MiniBertPreTrainedModel):
    """The encoder with both pretraining heads: MLM over the vocabulary and NSP (config.nsp_input)."""

    _tied_weights_keys = {"lm_head.decoder.weight": "minibert.embeddings.word_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.minibert = MiniBertModel(config)
        self.lm_head = MiniBertLMHead(config)
        self.nsp_head = make_nsp_head(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                next_sentence_label=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        # With a [CLS] NSP head the heads read only the MLM targets and [CLS], so the last layer computes only those
        # (the segment-pair head reads every token; compiled graphs keep static shapes).
        read = None
        if (labels is not None and self.config.nsp_input == "cls" and not output_hidden_states
                and not output_attentions and not torch.compiler.is_compiling()):
            read = labels != -100
            read[:, 0] = True
        encoded = self.minibert(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions, output_hidden_states, return_dict=True, output_positions=read)
        sequence_output = encoded.last_hidden_state  # (batch, seq, hidden)
        seq_relationship_logits = next_sentence_logits(self.nsp_head, encoded, input_ids, token_type_ids,
                                                       attention_mask)  # (batch, 2)

        mlm_loss = nsp_loss = None
        if labels is not None:
            # Sparse prediction: the vocabulary projection, most of a small BERT's compute, runs on targets only.
            targets = labels != -100  # (batch, seq)
            prediction_logits = self.lm_head(sequence_output[targets])  # (num_targets, vocab)
            target_ids = labels[targets]  # (num_targets,)
            # The mean over targets; a batch without targets contributes 0 rather than NaN.
            mlm_loss = SummedCrossEntropy.apply(prediction_logits.float(), target_ids) / max(target_ids.numel(), 1)
        else:
            prediction_logits = self.lm_head(sequence_output)  # (batch, seq, vocab)
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(seq_relationship_logits.float(), next_sentence_label.view(-1))

        parts = [part for part in (mlm_loss, nsp_loss) if part is not None]
        output = MiniBertForPreTrainingOutput(
            loss=sum(parts) if parts else None,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            prediction_logits=prediction_logits,
            seq_relationship_logits=seq_relationship_logits,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


# The pretraining heads' weights, in a pretraining checkpoint that a fine-tuning model loads without them.
PRETRAINING_HEADS = [r"^lm_head\.", r"^nsp_head\."]


class MiniBertForMaskedLM(MiniBertPreTrainedModel):
    """The encoder with the MLM head only; what `pipeline("fill-mask")` uses. Full logits, always."""

    _tied_weights_keys = {"lm_head.decoder.weight": "minibert.embeddings.word_embeddings.weight"}
    _keys_to_ignore_on_load_unexpected = [r"^nsp_head\."]  # pretraining checkpoints also hold the NSP head

    def __init__(self, config):
        super().__init__(config)
        self.minibert = MiniBertModel(config)
        self.lm_head = MiniBertLMHead(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoded = self.minibert(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions, output_hidden_states, return_dict=True)
        logits = self.lm_head(encoded.last_hidden_state)  # (batch, seq, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                attentions=encoded.attentions)
        return output if return_dict else output.to_tuple()


def sequence_classification_loss(config, logits, labels):
    """The loss config.problem_type names, chosen as BERT chooses it when unset: regression for one label, one
    class per text for integer labels, several independent yes/no labels (multi-label) for float labels."""
    problem_type = config.problem_type
    if problem_type is None:
        if config.num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
        config.problem_type = problem_type
    if problem_type == "regression":  # (batch,) or (batch, num_labels) targets
        return F.mse_loss(logits.squeeze().float(), labels.squeeze().float())
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.float().view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())  # multi-label: (batch, num_labels)


class MiniBertForSequenceClassification(MiniBertPreTrainedModel):
    """The encoder with a linear classifier on the [CLS] vector (or, with config.classifier_pooling = "mean", on the
    mean of the real tokens' vectors), for fine-tuning (config.num_labels classes; 1 = regression)."""

    _keys_to_ignore_on_load_unexpected = PRETRAINING_HEADS

    def __init__(self, config):
        super().__init__(config)
        self.minibert = MiniBertModel(config)
        self.dropout = Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoded = self.minibert(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions, output_hidden_states, return_dict=True)
        pooled = pool(self.config, encoded, input_ids, attention_mask)  # (batch, hidden)
        logits = self.classifier(self.dropout(pooled))  # (batch, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(self.config, logits, labels)
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                          attentions=encoded.attentions)
        return output if return_dict else output.to_tuple()


class MiniBertForTokenClassification(MiniBertPreTrainedModel):
    """The encoder with a linear classifier on every token (named-entity tagging; config.num_labels tags).
    Labels (batch, seq): a tag id, or -100 where there is nothing to predict (sub-words after the first, padding)."""

    _keys_to_ignore_on_load_unexpected = PRETRAINING_HEADS

    def __init__(self, config):
        super().__init__(config)
        self.minibert = MiniBertModel(config)
        self.dropout = Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoded = self.minibert(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(encoded.last_hidden_state))  # (batch, seq, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        output = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                       attentions=encoded.attentions)
        return output if return_dict else output.to_tuple()


class MiniBertForQuestionAnswering(MiniBertPreTrainedModel):
    """Extractive question answering: a start and an end score for every token of "[CLS] question [SEP] context
    [SEP]". The loss is the mean of the start and end cross-entropies; positions outside the sequence are ignored."""

    _keys_to_ignore_on_load_unexpected = PRETRAINING_HEADS

    def __init__(self, config):
        super().__init__(config)
        self.minibert = MiniBertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoded = self.minibert(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions, output_hidden_states, return_dict=True)
        start_logits, end_logits = self.qa_outputs(encoded.last_hidden_state).unbind(-1)  # each (batch, seq)
        loss = None
        if start_positions is not None and end_positions is not None:
            seq = start_logits.shape[1]  # as in BERT: an answer cut off by truncation points past the end, ignored
            start = start_positions.view(-1).clamp(0, seq)
            end = end_positions.view(-1).clamp(0, seq)
            loss = (F.cross_entropy(start_logits.float(), start, ignore_index=seq)
                    + F.cross_entropy(end_logits.float(), end, ignore_index=seq)) / 2
        output = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                              hidden_states=encoded.hidden_states, attentions=encoded.attentions)
        return output if return_dict else output.to_tuple()


class MiniBertForMultipleChoice(MiniBertPreTrainedModel):
    """Multiple choice: inputs (batch, choices, seq), each choice encoded on its own and pooled as for sequence
    classification, one score per choice; labels (batch,) the index of the right choice."""

    _keys_to_ignore_on_load_unexpected = PRETRAINING_HEADS

    def __init__(self, config):
        super().__init__(config)
        self.minibert = MiniBertModel(config)
        self.dropout = Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        num_choices = input_ids.shape[1]

        def flat(x):  # (batch, choices, seq) -> (batch * choices, seq)
            return None if x is None else x.flatten(0, 1)

        input_ids, attention_mask, token_type_ids = flat(input_ids), flat(attention_mask), flat(token_type_ids)
        position_ids = position_ids if position_ids is None or position_ids.dim() < 3 else flat(position_ids)
        encoded = self.minibert(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions, output_hidden_states, return_dict=True)
        pooled = pool(self.config, encoded, input_ids, attention_mask)  # (batch * choices, hidden)
        logits = self.classifier(self.dropout(pooled)).view(-1, num_choices)  # (batch, choices)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.view(-1))
        output = MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                           attentions=encoded.attentions)
        return output if return_dict else output.to_tuple()


class MiniBertForNextSentencePrediction(MiniBertPreTrainedModel):
    """The encoder with the NSP head alone (the pretraining checkpoint's own); labels (batch,): 0 = B follows A."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config):
        super().__init__(config)
        self.minibert = MiniBertModel(config)
        self.nsp_head = make_nsp_head(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoded = self.minibert(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions, output_hidden_states, return_dict=True)
        logits = next_sentence_logits(self.nsp_head, encoded, input_ids, token_type_ids, attention_mask)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.view(-1))
        output = NextSentencePredictorOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                             attentions=encoded.attentions)
        return output if return_dict else output.to_tuple()
