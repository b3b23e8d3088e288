"""Configuration of MiniBERT, a small BERT pretrained with masked-language modelling and next-sentence prediction.

The field names are those of Hugging Face's ``BertConfig``. The course lab's names are accepted as aliases:
``MiniBertConfig(d_model=10, n_layers=2, heads=2, dropout=0.1)`` is the lab's "baby" BERT.
"""

from transformers import PretrainedConfig

# Named sizes. "baby" is the course lab's model; "mini" is the project's default, the class defaults tuned for about
# ten CPU-minutes of pretraining (no dropout: it slows an under-trained model and costs a third of a CPU step;
# pre-LN: trains faster at high learning rates; rotary positions: attention sees offsets from the first step, MLM
# 30.6% vs 15.4% in make pretrain's budget; NSP on the two sentences' mean vectors: 81% vs 58%, and a classifier
# that reads the mean of the tokens, which that head trains); "small" is the benchmark size; "tiny" keeps the test
# suite fast.
PRESETS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128),
    "baby": dict(hidden_size=10, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2048,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
                 position_embedding_type="sinusoidal"),
    "mini": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_position="pre",
                 position_embedding_type="rotary", nsp_input="segments", classifier_pooling="mean"),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=512),
}

# learned: a trained table added to the embeddings; sinusoidal: fixed vectors added likewise; rotary (RoPE): no
# table, every layer rotates queries and keys by position (angles from rope_theta), so attention sees offsets.
POSITION_EMBEDDING_TYPES = ("learned", "sinusoidal", "rotary")
LAYER_NORM_POSITIONS = ("post", "pre")
NSP_INPUTS = ("cls", "segments")
CLASSIFIER_POOLINGS = ("cls", "mean")

# The code files travel with every checkpoint; this map tells the Auto classes where each class lives.
AUTO_MAP = {
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


class MiniBertConfig(PretrainedConfig):
    """Hyperparameters of a MiniBERT model. The defaults are BERT's choices (post-LN, dropout 0.1) at the size of
    the "mini" preset, with a 8192-word vocabulary."""

    model_type = "minibert"
    # Read-only aliases in the course lab's words: config.d_model == config.hidden_size, and so on.
    attribute_map = {"d_model": "hidden_size", "n_layers": "num_hidden_layers", "heads": "num_attention_heads"}

    def __init__(
        self,
        vocab_size=8192,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=128,
        type_vocab_size=2,
        position_embedding_type="learned",
        rope_theta=10000.0,
        layer_norm_eps=1e-12,
        layer_norm_position="post",
        initializer_range=0.02,
        pad_token_id=0,
        tie_word_embeddings=True,
        classifier_dropout=None,
        use_pooler=False,
        nsp_input="cls",
        classifier_pooling="cls",
        **kwargs,
    ):
        # The course lab's argument names.
        hidden_size = kwargs.pop("d_model", hidden_size)
        num_hidden_layers = kwargs.pop("n_layers", num_hidden_layers)
        num_attention_heads = kwargs.pop("heads", num_attention_heads)
        if "dropout" in kwargs:
            hidden_dropout_prob = attention_probs_dropout_prob = kwargs.pop("dropout")

        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.layer_norm_eps = layer_norm_eps
        self.layer_norm_position = layer_norm_position
        self.initializer_range = initializer_range
        self.pad_token_id = pad_token_id
        self.tie_word_embeddings = tie_word_embeddings
        self.classifier_dropout = classifier_dropout
        self.use_pooler = use_pooler  # BERT's pooler (dense + tanh on [CLS]) under the NSP and classifier heads
        # What the NSP head reads: "cls" (BERT: the pooled [CLS] vector) or "segments" (the mean vectors a, b of
        # sentences A and B, compared as (a * b, |a - b|) through dense + tanh).
        self.nsp_input = nsp_input
        # What a sequence classifier reads: "cls" (the pooled [CLS] vector, BERT) or "mean" (the mean of the real
        # tokens' vectors, which an encoder pretrained with nsp_input="segments" has learnt to fill).
        self.classifier_pooling = classifier_pooling
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)
        self._check()

    def _check(self):
        """Raise a ValueError naming the first field that cannot make a working model."""
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MiniBertConfig.{field} must be a positive integer, got {value!r}")
        if self.vocab_size < 5:
            raise ValueError(f"MiniBertConfig.vocab_size must be at least 5 (the special tokens "
                             f"[PAD] [CLS] [SEP] [MASK] [UNK]), got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"MiniBertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"MiniBertConfig.position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                             f"got {self.position_embedding_type!r}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 1:
            raise ValueError(f"MiniBertConfig.rope_theta must be a number above 1, got {self.rope_theta!r}")
        if self.position_embedding_type == "rotary" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"MiniBertConfig: rotary positions need an even head size, got "
                             f"{self.hidden_size // self.num_attention_heads}")
        if self.nsp_input not in NSP_INPUTS:
            raise ValueError(f"MiniBertConfig.nsp_input must be one of {NSP_INPUTS}, got {self.nsp_input!r}")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"MiniBertConfig.classifier_pooling must be one of {CLASSIFIER_POOLINGS}, "
                             f"got {self.classifier_pooling!r}")
        if self.layer_norm_position not in LAYER_NORM_POSITIONS:
            raise ValueError(f"MiniBertConfig.layer_norm_position must be one of {LAYER_NORM_POSITIONS}, "
                             f"got {self.layer_norm_position!r}")
        if self.position_embedding_type == "sinusoidal" and self.hidden_size % 2:
            raise ValueError(f"MiniBertConfig.hidden_size must be even for sinusoidal positions, got {self.hidden_size}")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"MiniBertConfig.{field} must be in [0, 1), got {value!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"MiniBertConfig.pad_token_id must be inside the vocabulary "
                             f"[0, {self.vocab_size}), got {self.pad_token_id}")

    @classmethod
    def from_preset(cls, name, **overrides):
        """A config of the named size ("tiny", "baby", "mini", "small"); keyword arguments override fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
