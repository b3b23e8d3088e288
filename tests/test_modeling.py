"""The model package: config, parity of the fast paths with plain references, saving, and remote-code loading."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining

from isolation import BLOCK_MINIBERT_HF
from minibert_hf import (
    PRESETS,
    MiniBertConfig,
    MiniBertForMaskedLM,
    MiniBertForPreTraining,
    MiniBertForSequenceClassification,
    MiniBertModel,
)

VOCAB = 97


def make_batch(batch=4, seq=16, vocab=VOCAB, seed=0):
    """A batch shaped like real pretraining rows: [CLS] A [SEP] B [SEP], right-padded, ~15% targets."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([seq, seq - 5, seq - 2, 7][:batch])
    input_ids = torch.randint(5, vocab, (batch, seq), generator=g)
    attention_mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    token_type_ids = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths.tolist()):
        half = length // 2
        input_ids[row, 0], input_ids[row, half], input_ids[row, length - 1] = 1, 2, 2
        token_type_ids[row, half + 1:length] = 1
    input_ids[attention_mask == 0] = 0
    token_type_ids[attention_mask == 0] = 0
    is_target = (torch.rand(batch, seq, generator=g) < 0.2) & (input_ids > 4)
    is_target[:, 1] = True  # at least one target per row
    labels = torch.where(is_target, input_ids, torch.tensor(-100))
    input_ids = torch.where(is_target, torch.tensor(3), input_ids)
    next_sentence_label = torch.randint(0, 2, (batch,), generator=g)
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                labels=labels, next_sentence_label=next_sentence_label)


def tiny_model(cls=MiniBertForPreTraining, seed=0, **overrides):
    torch.manual_seed(seed)
    model = cls(MiniBertConfig.from_preset("tiny", vocab_size=VOCAB, **overrides))
    return model.eval()


# ----------------------------------------------------------------------------------------------------- config


def test_seed_aliases_give_hf_fields():
    config = MiniBertConfig(d_model=10, n_layers=2, heads=2, dropout=0.1)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (10, 2, 2)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1
    assert (config.d_model, config.n_layers, config.heads) == (10, 2, 2)


def test_presets():
    baby = MiniBertConfig.from_preset("baby", vocab_size=300)
    assert (baby.hidden_size, baby.num_hidden_layers, baby.num_attention_heads) == (10, 2, 2)
    assert baby.intermediate_size == 2048 and baby.hidden_dropout_prob == 0.1
    assert baby.position_embedding_type == "sinusoidal" and baby.vocab_size == 300
    mini, small = MiniBertConfig.from_preset("mini"), MiniBertConfig.from_preset("small")
    assert mini.hidden_size < small.hidden_size
    assert (mini.layer_norm_position, mini.hidden_dropout_prob, mini.attention_probs_dropout_prob) == ("pre", 0, 0)
    assert MiniBertConfig().layer_norm_position == "post" and MiniBertConfig().hidden_dropout_prob == 0.1  # BERT's
    assert {"baby", "mini", "small", "tiny"} <= set(PRESETS)
    with pytest.raises(ValueError, match="unknown preset 'huge'.*baby"):
        MiniBertConfig.from_preset("huge")


@pytest.mark.parametrize("kwargs, field", [
    (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
    (dict(vocab_size=4), "vocab_size"),
    (dict(position_embedding_type="alibi"), "position_embedding_type"),
    (dict(rope_theta=0.5), "rope_theta"),
    (dict(nsp_input="mean"), "nsp_input"),
    (dict(classifier_pooling="max"), "classifier_pooling"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    (dict(layer_norm_position="sandwich"), "layer_norm_position"),
])
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"MiniBertConfig.{field}"):
        MiniBertConfig(**kwargs)


def test_config_round_trip(tmp_path):
    config = MiniBertConfig.from_preset("baby", vocab_size=123)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MiniBertConfig and loaded.model_type == "minibert"
    ignore = {"_name_or_path"}
    assert {k: v for k, v in loaded.to_dict().items() if k not in ignore} == \
        {k: v for k, v in config.to_dict().items() if k not in ignore}


# ------------------------------------------------------------------------------------------------ the model


def test_sparse_mlm_loss_equals_dense_cross_entropy():
    model = tiny_model()
    batch = make_batch()
    sparse = model(**batch)
    dense = model(**{k: v for k, v in batch.items() if k != "labels"})
    assert dense.prediction_logits.shape == (4, 16, VOCAB)
    targets = batch["labels"] != -100
    assert sparse.prediction_logits.shape == (int(targets.sum()), VOCAB)
    torch.testing.assert_close(sparse.prediction_logits, dense.prediction_logits[targets], atol=1e-4, rtol=0)
    dense_mlm = F.cross_entropy(dense.prediction_logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    dense_nsp = F.cross_entropy(dense.seq_relationship_logits, batch["next_sentence_label"])
    assert abs(sparse.mlm_loss.item() - dense_mlm.item()) < 1e-4
    assert abs(sparse.nsp_loss.item() - dense_nsp.item()) < 1e-4
    assert abs(sparse.loss.item() - (dense_mlm + dense_nsp).item()) < 1e-4
    # The masked-LM model computes the same loss the dense way.
    mlm_model = MiniBertForMaskedLM(model.config).eval()
    mlm_model.load_state_dict(model.state_dict(), strict=False)
    assert abs(mlm_model(**{k: v for k, v in batch.items() if k != "next_sentence_label"}).loss.item()
               - dense_mlm.item()) < 1e-4


def test_batch_without_targets_has_zero_mlm_loss():
    model = tiny_model()
    batch = make_batch()
    batch["labels"].fill_(-100)
    out = model(**batch)
    assert out.mlm_loss.item() == 0.0 and torch.isfinite(out.loss)


# Model variants the parity and round-trip tests cover: position type, LayerNorm placement, other fields.
VARIANTS = [("learned", "post", {}), ("sinusoidal", "post", {}), ("learned", "pre", {}), ("rotary", "pre", {}),
            ("rotary", "pre", dict(use_pooler=True)), ("rotary", "pre", dict(nsp_input="segments"))]


@pytest.mark.parametrize("position_embedding_type, layer_norm_position, fields", VARIANTS)
def test_padding_does_not_change_real_positions(position_embedding_type, layer_norm_position, fields):
    model = tiny_model(position_embedding_type=position_embedding_type, layer_norm_position=layer_norm_position,
                       **fields)
    batch = make_batch()
    row, length = 1, int(batch["attention_mask"][1].sum())
    padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"])
    alone = model(input_ids=batch["input_ids"][row:row + 1, :length],
                  token_type_ids=batch["token_type_ids"][row:row + 1, :length])
    torch.testing.assert_close(padded.prediction_logits[row, :length], alone.prediction_logits[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(padded.seq_relationship_logits[row], alone.seq_relationship_logits[0],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("position_embedding_type, layer_norm_position, fields", VARIANTS)
def test_last_layer_on_what_the_heads_read_gives_the_whole_computation(position_embedding_type, layer_norm_position,
                                                                        fields):
    """With labels and the [CLS] NSP head the last layer computes only the MLM targets and [CLS]: its feed-forward
    sees those rows alone, and the losses, logits and every gradient are those of the whole encoder followed by the
    heads on what they read (built here from the parts; the segment-pair head reads every token)."""
    from minibert_hf.modeling_minibert import next_sentence_logits

    model = tiny_model(position_embedding_type=position_embedding_type, layer_norm_position=layer_norm_position,
                       **fields)
    batch = make_batch()
    targets = batch["labels"] != -100
    rows_seen = []
    hook = model.minibert.layers[-1].intermediate.register_forward_pre_hook(
        lambda module, args: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    out = model(**batch)
    hook.remove()
    cls_head = model.config.nsp_input == "cls"
    assert rows_seen == [int(targets.sum()) + len(targets) if cls_head else int(batch["attention_mask"].sum())]
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    encoded = model.minibert(*inputs)
    logits = model.lm_head(encoded.last_hidden_state[targets])
    nsp_logits = next_sentence_logits(model.nsp_head, encoded, batch["input_ids"], batch["token_type_ids"],
                                      batch["attention_mask"])
    loss = (F.cross_entropy(logits, batch["labels"][targets])
            + F.cross_entropy(nsp_logits, batch["next_sentence_label"]))
    loss.backward()
    torch.testing.assert_close(out.prediction_logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.seq_relationship_logits, nsp_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=0)
    assert grads.keys() == {name for name, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("padded", [True, False])
def test_output_positions_computes_those_and_zeros_the_rest(padded):
    model = tiny_model(MiniBertModel)
    batch = make_batch()
    mask = batch["attention_mask"] if padded else torch.ones_like(batch["attention_mask"])
    wanted = torch.zeros_like(mask, dtype=torch.bool)
    wanted[0, [0, 3, 9, 15]] = True
    wanted[1, 2] = True  # row 2 wants nothing, row 3 its last real token
    wanted[3, 6] = True
    whole = model(batch["input_ids"], mask, batch["token_type_ids"]).last_hidden_state
    some = model(batch["input_ids"], mask, batch["token_type_ids"], output_positions=wanted).last_hidden_state
    assert some.shape == whole.shape
    torch.testing.assert_close(some[wanted], whole[wanted], atol=1e-5, rtol=0)
    assert not some[~wanted].any()
    nothing = model(batch["input_ids"], mask, batch["token_type_ids"],
                    output_positions=torch.zeros_like(wanted)).last_hidden_state
    assert nothing.shape == whole.shape and not nothing.any()


def test_summed_cross_entropy_is_torchs_with_its_gradient():
    """The MLM loss's cross-entropy gives torch's summed loss and gradient, for repeated targets and none; its
    backward reuses the saved log-probabilities in place, so a second backward through the graph raises."""
    from minibert_hf.modeling_minibert import SummedCrossEntropy

    for targets in (torch.tensor([3, 0, 3, 9, 1]), torch.tensor([], dtype=torch.long)):
        logits = (torch.randn(len(targets), 10) * 4).requires_grad_()
        expected = F.cross_entropy(logits, targets, reduction="sum")
        (expected_grad,) = torch.autograd.grad(expected * 0.7, logits)
        loss = SummedCrossEntropy.apply(logits, targets)
        (loss * 0.7).backward(retain_graph=True)
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(logits.grad, expected_grad)
        if len(targets):
            with pytest.raises(RuntimeError):
                loss.backward()


def test_rotate_turns_each_feature_pair_by_its_angle():
    """`rotate` is RoPE: at position p, feature pair (i, i + d/2), read as the complex number x_i + j x_(i+d/2), is
    multiplied by exp(j p theta^(-2i/d)), the same for queries and keys and for every head."""
    from minibert_hf.modeling_minibert import rotary_tables, rotate

    head_dim, theta, half = 8, 100.0, 4
    positions = torch.tensor([[0, 1, 2, 7, 30]])
    x = torch.randn(1, 5, 2, 3, head_dim)  # (batch, seq, query|key, heads, head_dim)
    got = rotate(x, *rotary_tables(positions, head_dim, theta))
    angles = positions[0, :, None, None, None].float() * theta ** (-2 * torch.arange(half).float() / head_dim)
    turned = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)
    torch.testing.assert_close(got, torch.cat((turned.real, turned.imag), dim=-1))


def test_sinusoidal_positions_are_the_transformers_sines_and_cosines():
    """Feature 2i of position p is sin(p / 10000^(2i/d)) and feature 2i + 1 its cosine ("Attention Is All You
    Need", the course lab's encoding), so position 0 reads 0, 1, 0, 1, ..."""
    from minibert_hf.modeling_minibert import sinusoidal_positions

    dim, positions = 8, torch.tensor([[0, 1, 5, 100]])
    got = sinusoidal_positions(positions, dim)
    assert got.shape == (1, 4, dim)
    for column, p in enumerate(positions[0].tolist()):
        for i in range(dim // 2):
            angle = torch.tensor(p / 10000 ** (2 * i / dim))
            torch.testing.assert_close(got[0, column, 2 * i], angle.sin(), atol=1e-5, rtol=0)
            torch.testing.assert_close(got[0, column, 2 * i + 1], angle.cos(), atol=1e-5, rtol=0)


def test_rotary_positions_are_relative():
    """RoPE scores depend on offsets only: shifting every position changes nothing; a permutation does."""
    model = tiny_model(position_embedding_type="rotary", layer_norm_position="pre")
    assert not hasattr(model.minibert.embeddings, "position_embeddings")
    with torch.no_grad():  # sharp attention (freshly initialised, it is near uniform and positions barely matter)
        for layer in model.minibert.layers:
            layer.attention.qkv.weight.mul_(20.0)
    batch = {k: v for k, v in make_batch().items() if k != "labels"}
    out = model(**batch).prediction_logits
    shifted = model(**batch, position_ids=torch.arange(16)[None] + 5).prediction_logits
    torch.testing.assert_close(shifted, out, atol=1e-4, rtol=0)
    reversed_ = model(**batch, position_ids=torch.arange(16).flip(0)[None]).prediction_logits
    assert (reversed_ - out).abs().max() > 1e-3


def reference_attention(attention, hidden_states, attention_mask):
    """Plain softmax attention written from the weights, head by head: the textbook formula."""
    heads, head_dim = attention.num_heads, attention.head_dim
    query, key, value = attention.qkv(hidden_states).split(heads * head_dim, dim=-1)
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = query[..., part] @ key[..., part].transpose(1, 2) / head_dim ** 0.5  # (batch, seq, seq)
        scores = scores + (1.0 - attention_mask[:, None, :].float()) * -1e9
        outputs.append(torch.softmax(scores, dim=-1) @ value[..., part])
    return torch.cat(outputs, dim=-1)


def test_sdpa_matches_plain_softmax_attention():
    model = tiny_model(MiniBertModel)
    batch = make_batch()
    hidden = model.embeddings(batch["input_ids"], batch["token_type_ids"])
    mask = batch["attention_mask"].bool()[:, None, None, :]
    attention = model.layers[0].attention
    fast, no_weights = attention(hidden, mask)
    explicit, weights = attention(hidden, mask, output_attentions=True)
    reference = reference_attention(attention, hidden, batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert no_weights is None and weights.shape == (4, 2, 16, 16)
    torch.testing.assert_close(fast[real], reference[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit[real], reference[real], atol=1e-5, rtol=0)
    # Padding keys get no attention.
    assert weights[1, :, :, int(real[1].sum()):].abs().max() == 0
    # The whole model agrees with itself whether or not attention weights are requested.
    a = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    b = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, output_attentions=True,
              output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=1e-5, rtol=0)
    assert len(b.attentions) == 2 and len(b.hidden_states) == 3
    torch.testing.assert_close(b.pooler_output, b.last_hidden_state[:, 0])


def test_cpu_dropout_drops_at_its_rate_and_keeps_the_mean():
    """The model's own dropout (a cheaper mask on the CPU): each element dropped with probability p, independently
    of its place among the four that share a random draw, the rest scaled so the mean stays; seeded like torch's."""
    from minibert_hf.modeling_minibert import dropout

    torch.manual_seed(0)  # the rate checks allow four standard deviations: seeded, they never flake
    n = 400_003  # not a multiple of 4
    x = torch.ones(n, requires_grad=True)
    for p in (0.1, 0.5):
        y = dropout(x, p, True)
        dropped = y == 0
        tolerance = 4 * (p * (1 - p) / (n / 4)) ** 0.5  # four standard deviations of a quarter of the elements
        for offset in range(4):
            assert abs(dropped[offset::4].double().mean().item() - p) < tolerance, (p, offset)
        groups = dropped[: n // 4 * 4].view(-1, 4)  # the four elements of each random draw: independent
        both = (groups[:, 0] & groups[:, 1]).double().mean().item()
        assert abs(both - p * p) < 4 * (p * p * (1 - p * p) / (n / 4)) ** 0.5, p
        kept = y[~dropped]
        assert torch.all(kept == kept[0]) and abs(kept[0].item() - 1 / (1 - p)) < 1e-4
        assert abs(y.double().mean().item() - 1) < 4 * (p / (1 - p) / n) ** 0.5
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(grad, y.detach())  # the gradient passes the kept elements, scaled the same way
    torch.manual_seed(3)
    first = dropout(torch.ones(2, 3, 50), 0.3, True)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(torch.ones(2, 3, 50), 0.3, True)) and first.shape == (2, 3, 50)
    assert not torch.equal(first, dropout(torch.ones(2, 3, 50), 0.3, True))
    half = torch.ones(1000, dtype=torch.bfloat16)
    assert dropout(half, 0.1, True).dtype == torch.bfloat16
    assert dropout(x, 0.5, False) is x and dropout(x, 0.0, True) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros(n))


def test_attention_dropout_on_the_cpu():
    """Attention dropout runs (train mode differs from eval mode with no other dropout), through the same draws
    whether or not the attention weights are asked for; every dropout layer is still an nn.Dropout."""
    model = tiny_model(MiniBertModel, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    assert all(isinstance(m.dropout, torch.nn.Dropout) for m in model.modules() if hasattr(m, "dropout"))
    batch = {k: v for k, v in make_batch().items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    real = batch["attention_mask"].bool()
    evaluated = model(**batch).last_hidden_state
    model.train()
    torch.manual_seed(0)
    trained = model(**batch).last_hidden_state
    torch.manual_seed(0)
    with_weights = model(**batch, output_attentions=True)
    assert (trained - evaluated)[real].abs().max() > 1e-2
    torch.testing.assert_close(with_weights.last_hidden_state[real], trained[real], atol=1e-6, rtol=0)
    assert len(with_weights.attentions) == 2
    model.config.attention_probs_dropout_prob = 0.0
    for layer in model.layers:
        layer.attention.dropout_prob = 0.0
    torch.testing.assert_close(model(**batch).last_hidden_state[real], evaluated[real], atol=1e-5, rtol=0)


def reference_pre_ln_layer(layer, hidden_states, mask):
    """A pre-LN block written out: x + attention(LN(x)), then x + feed-forward(LN(x))."""
    normed = layer.attention_LayerNorm(hidden_states)
    hidden_states = hidden_states + layer.attention_output(reference_attention(layer.attention, normed, mask))
    normed = layer.output_LayerNorm(hidden_states)
    return hidden_states + layer.output(F.gelu(layer.intermediate(normed)))


def test_pre_layer_norm_blocks_match_the_formula():
    model = tiny_model(MiniBertModel, layer_norm_position="pre")
    post = tiny_model(MiniBertModel)
    assert set(dict(model.named_parameters())) - set(dict(post.named_parameters())) == {
        "final_LayerNorm.weight", "final_LayerNorm.bias"}
    batch = make_batch()
    mask = batch["attention_mask"]
    hidden = model.embeddings(batch["input_ids"], batch["token_type_ids"])
    for layer in model.layers:
        hidden = reference_pre_ln_layer(layer, hidden, mask)
    expected = model.final_LayerNorm(hidden)
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                output_hidden_states=True)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], expected[real], atol=1e-5, rtol=0)
    # The last hidden state reported is the normalised output; the earlier ones are the residual stream.
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def test_pooler_is_berts_dense_and_tanh_on_cls():
    """With use_pooler the [CLS] vector goes through BERT's pooler: transformers' BertPooler with the same weights
    gives the same pooled vector."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertPooler

    model = tiny_model(MiniBertModel, use_pooler=True)
    bert_pooler = BertPooler(BertConfig(hidden_size=model.config.hidden_size))
    bert_pooler.load_state_dict(model.pooler.state_dict())
    batch = make_batch()
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.testing.assert_close(out.pooler_output, bert_pooler(out.last_hidden_state))
    plain = tiny_model(MiniBertModel)  # without a pooler: the [CLS] vector itself
    out = plain(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])


def test_segment_pair_head_compares_the_two_sentences_means():
    """The "segments" NSP head: a = mean of sentence A's real tokens ([CLS] and its [SEP] included), b = mean of
    B's, logits = classifier(tanh(dense([a * b, |a - b|]))); swapping a and b changes nothing."""
    model = tiny_model(nsp_input="segments", position_embedding_type="rotary", layer_norm_position="pre")
    batch = make_batch()
    out = model(**batch, output_hidden_states=True)
    hidden, head = out.hidden_states[-1], model.nsp_head
    for row in range(hidden.shape[0]):
        real = batch["attention_mask"][row].bool()
        in_b = batch["token_type_ids"][row].bool() & real
        a, b = hidden[row][real & ~in_b].mean(0), hidden[row][in_b].mean(0)
        for first, second in ((a, b), (b, a)):
            expected = head.classifier(torch.tanh(head.dense(torch.cat((first * second, (first - second).abs())))))
            torch.testing.assert_close(out.seq_relationship_logits[row], expected, atol=1e-5, rtol=0)


def test_token_embedding_is_added_once():
    model = tiny_model(MiniBertModel)
    emb = model.embeddings
    ids = torch.tensor([[1, 9, 10, 2]])
    expected = emb.LayerNorm(emb.word_embeddings(ids) + emb.position_embeddings(torch.arange(4))[None]
                             + emb.token_type_embeddings(torch.zeros_like(ids)))
    torch.testing.assert_close(emb(ids), expected)


def test_too_long_input_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(torch.ones(1, 129, dtype=torch.long))
    assert model(torch.ones(1, 128, dtype=torch.long)).prediction_logits.shape == (1, 128, VOCAB)  # the limit itself


def test_tuple_outputs_and_kwargs():
    model = tiny_model()
    batch = make_batch()
    as_tuple = model(**batch, return_dict=False, some_unused_kwarg=True)
    as_dict = model(**batch)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    # BertForPreTraining's order: loss, prediction logits, NSP logits (then our loss parts)
    loss, prediction_logits, seq_relationship_logits = as_tuple[:3]
    torch.testing.assert_close(prediction_logits, as_dict.prediction_logits)
    torch.testing.assert_close(seq_relationship_logits, as_dict.seq_relationship_logits)
    torch.testing.assert_close(as_tuple[3:], (as_dict.mlm_loss, as_dict.nsp_loss))
    from transformers import BertConfig, BertForPreTraining

    bert = BertForPreTraining(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64)).eval()
    bert_loss, bert_scores, bert_nsp = bert(input_ids=batch["input_ids"], labels=batch["labels"],
                                            next_sentence_label=batch["next_sentence_label"], return_dict=False)
    assert bert_loss.shape == loss.shape and bert_nsp.shape == seq_relationship_logits.shape
    assert bert_scores.shape[-1] == prediction_logits.shape[-1] == VOCAB  # BERT's at every position, ours at targets
    position_ids = torch.arange(16).expand(4, 16)
    torch.testing.assert_close(model(**batch, position_ids=position_ids).loss, as_dict.loss)


@pytest.mark.parametrize("fields", [{}, dict(position_embedding_type="rotary", use_pooler=True),
                                    dict(position_embedding_type="rotary", nsp_input="segments")])
def test_gradient_reaches_every_parameter(fields):
    model = tiny_model(**fields).train()
    model(**make_batch()).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.lm_head.decoder.weight is model.minibert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classification_learns_a_separable_task(pooling):
    torch.manual_seed(0)
    model = MiniBertForSequenceClassification(MiniBertConfig.from_preset("tiny", vocab_size=VOCAB, num_labels=2,
                                                                         classifier_pooling=pooling))
    ids = torch.randint(5, VOCAB, (16, 8))
    labels = torch.arange(16) % 2
    ids[:, 1] = 10 + labels  # the class is written in token 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(ids).logits.argmax(-1) == labels).all()


def test_mean_pooling_reads_the_real_tokens_only():
    """classifier_pooling="mean": the classifier sees the mean of the real tokens' vectors (padding left out)."""
    torch.manual_seed(0)
    model = MiniBertForSequenceClassification(MiniBertConfig.from_preset(
        "tiny", vocab_size=VOCAB, num_labels=3, classifier_pooling="mean")).eval()
    batch = make_batch()
    with torch.no_grad():
        hidden = model.minibert(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][row].sum())
            expected = model.classifier(hidden[row, :length].mean(0))
            torch.testing.assert_close(logits[row], expected, atol=1e-5, rtol=0)
    assert not bool(batch["attention_mask"].all())  # the batch has padding


# ------------------------------------------------------------------------------------------ saving and loading


def test_save_pretrained_folder(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_minibert.py", "modeling_minibert.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "minibert"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_minibert.MiniBertConfig",
        "AutoModel": "modeling_minibert.MiniBertModel",
        "AutoModelForPreTraining": "modeling_minibert.MiniBertForPreTraining",
        "AutoModelForMaskedLM": "modeling_minibert.MiniBertForMaskedLM",
        "AutoModelForSequenceClassification": "modeling_minibert.MiniBertForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_minibert.MiniBertForTokenClassification",
        "AutoModelForQuestionAnswering": "modeling_minibert.MiniBertForQuestionAnswering",
        "AutoModelForMultipleChoice": "modeling_minibert.MiniBertForMultipleChoice",
        "AutoModelForNextSentencePrediction": "modeling_minibert.MiniBertForNextSentencePrediction",
    }
    # The tied decoder is stored once.
    assert "lm_head.decoder.weight" not in load_file(tmp_path / "model.safetensors")


@pytest.mark.parametrize("position_embedding_type, layer_norm_position, fields", VARIANTS)
def test_from_pretrained_reproduces_outputs_exactly(tmp_path, position_embedding_type, layer_norm_position, fields):
    model = tiny_model(position_embedding_type=position_embedding_type, layer_norm_position=layer_norm_position,
                       **fields)
    model.save_pretrained(tmp_path)
    batch = make_batch()
    for loaded in (MiniBertForPreTraining.from_pretrained(tmp_path), AutoModelForPreTraining.from_pretrained(tmp_path)):
        assert type(loaded) is MiniBertForPreTraining
        assert loaded.lm_head.decoder.weight is loaded.minibert.embeddings.word_embeddings.weight
        assert torch.equal(loaded.eval()(**batch).prediction_logits, model(**batch).prediction_logits)
        assert torch.equal(loaded(**batch).seq_relationship_logits, model(**batch).seq_relationship_logits)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is MiniBertModel
    assert torch.equal(base(batch["input_ids"]).last_hidden_state, model.minibert(batch["input_ids"]).last_hidden_state)
    masked_lm = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert torch.equal(masked_lm(batch["input_ids"]).logits, model(batch["input_ids"]).prediction_logits)


REMOTE_LOADER = BLOCK_MINIBERT_HF + textwrap.dedent("""
    import json, sys

    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining

    folder = sys.argv[1]
    batch = torch.load(sys.argv[2], weights_only=True)
    results = {}
    for auto in (AutoModel, AutoModelForPreTraining, AutoModelForMaskedLM):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(**batch)
        first = out.last_hidden_state if auto is AutoModel else out[0]
        results[auto.__name__] = {"class": type(model).__name__, "module": type(model).__module__,
                                  "values": first.flatten().tolist()}
    results["leaked"] = sorted(name for name in sys.modules if name.startswith("minibert_hf"))
    print(json.dumps(results))
""")


@pytest.mark.parametrize("fields", [dict(position_embedding_type="sinusoidal"),
                                    dict(position_embedding_type="rotary", layer_norm_position="pre",
                                         nsp_input="segments", use_pooler=True)])
def test_checkpoint_loads_with_remote_code_without_the_package(tmp_path, fields):
    model = tiny_model(**fields)
    model.save_pretrained(tmp_path / "saved")
    elsewhere = tmp_path / "elsewhere" / "checkpoint"
    shutil.copytree(tmp_path / "saved", elsewhere)
    batch = make_batch()
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    torch.save(batch, tmp_path / "batch.pt")
    (tmp_path / "load.py").write_text(REMOTE_LOADER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "load.py"), str(elsewhere), str(tmp_path / "batch.pt")],
                          cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["leaked"] == []
    with torch.no_grad():
        expected = {
            "AutoModel": model.minibert(**batch).last_hidden_state,
            "AutoModelForPreTraining": model(**batch).prediction_logits,
            "AutoModelForMaskedLM": model(**batch).prediction_logits,
        }
    for name, tensor in expected.items():
        assert "minibert_hf" not in results[name]["module"]
        assert torch.equal(torch.tensor(results[name]["values"]), tensor.flatten()), name
    assert results["AutoModelForPreTraining"]["class"] == "MiniBertForPreTraining"
    assert results["AutoModelForMaskedLM"]["class"] == "MiniBertForMaskedLM"


IMPORT_WATCHER = textwrap.dedent("""
    import builtins, importlib.util, json, os, socket, sys

    sys.dont_write_bytecode = True  # Python's own .pyc cache is not the model code writing files
    folder = sys.argv[1]
    events = []
    real_open = builtins.open

    def watched_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            events.append(f"open {file} {mode}")
        return real_open(file, mode, *args, **kwargs)

    def no_network(*args, **kwargs):
        events.append("socket")
        raise OSError("network is not allowed while importing model code")

    import torch, transformers  # the libraries may set themselves up; the model code may not
    builtins.open = watched_open
    socket.socket = no_network
    socket.create_connection = no_network
    before = sorted(os.listdir(folder))

    # Import the two files as a package, the way transformers' remote-code loader does.
    spec = importlib.util.spec_from_file_location("checkpoint_code", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules["checkpoint_code"] = package
    for name in ("configuration_minibert", "modeling_minibert"):
        sub = importlib.util.spec_from_file_location(f"checkpoint_code.{name}", os.path.join(folder, name + ".py"))
        module = importlib.util.module_from_spec(sub)
        sys.modules[sub.name] = module
        sub.loader.exec_module(module)
    defined = sorted(n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
    print(json.dumps({"events": events, "changed": sorted(os.listdir(folder)) != before, "classes": defined}))
""")


def test_remote_code_only_defines_classes_at_import(tmp_path):
    tiny_model().save_pretrained(tmp_path / "checkpoint")
    (tmp_path / "checkpoint" / "__init__.py").write_text("")
    (tmp_path / "watch.py").write_text(IMPORT_WATCHER)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "watch.py"), str(tmp_path / "checkpoint")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["events"] == [] and not report["changed"]
    assert "MiniBertForPreTraining" in report["classes"]
