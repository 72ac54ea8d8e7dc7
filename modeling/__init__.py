"""scratchformer's model: `ScratchformerConfig` and the `Scratchformer*` classes.

Importing this package registers them with transformers' Auto classes, so an installed
scratchformer loads checkpoints with plain `AutoModelForCausalLM.from_pretrained(dir)`. This file is
never copied into checkpoints: the remote-code payload is the flat files beside it, read in this order:

    transformer_scratchformer.py     the transformer: norms, positions, attention, MLP, block
    configuration_scratchformer.py   every number the model reads, checked
    modeling_scratchformer.py        the Hugging Face contract: the model, the heads, the KV cache's name
    loss_scratchformer.py            the LM head and its cross-entropy, fused
    checks_scratchformer.py          the input checks both architectures share
    configuration_/modeling_scratchformer_seq2seq.py   the paper's encoder-decoder, from the same blocks
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_scratchformer import PRESETS, ScratchformerConfig
from .configuration_scratchformer_seq2seq import ScratchformerSeq2SeqConfig
from .modeling_scratchformer import (
    AUTO_MAP,
    ScratchformerForCausalLM,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
    ScratchformerForTokenClassification,
    ScratchformerModel,
    ScratchformerPreTrainedModel,
)
from .modeling_scratchformer_seq2seq import (
    ScratchformerForConditionalGeneration,
    ScratchformerSeq2SeqModel,
    ScratchformerSeq2SeqPreTrainedModel,
)

AutoConfig.register(ScratchformerConfig.model_type, ScratchformerConfig, exist_ok=True)
for _auto, _model in (
    (AutoModel, ScratchformerModel),
    (AutoModelForCausalLM, ScratchformerForCausalLM),
    (AutoModelForSequenceClassification, ScratchformerForSequenceClassification),
    (AutoModelForTokenClassification, ScratchformerForTokenClassification),
    (AutoModelForMaskedLM, ScratchformerForMaskedLM),
):
    _auto.register(ScratchformerConfig, _model, exist_ok=True)

# The paper's encoder-decoder: its own model_type, so one Auto class never has to guess which.
AutoConfig.register(ScratchformerSeq2SeqConfig.model_type, ScratchformerSeq2SeqConfig, exist_ok=True)
AutoModel.register(ScratchformerSeq2SeqConfig, ScratchformerSeq2SeqModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(ScratchformerSeq2SeqConfig, ScratchformerForConditionalGeneration, exist_ok=True)

__all__ = [
    "AUTO_MAP",
    "PRESETS",
    "ScratchformerConfig",
    "ScratchformerPreTrainedModel",
    "ScratchformerModel",
    "ScratchformerForCausalLM",
    "ScratchformerForSequenceClassification",
    "ScratchformerForTokenClassification",
    "ScratchformerForMaskedLM",
    "ScratchformerSeq2SeqConfig",
    "ScratchformerSeq2SeqPreTrainedModel",
    "ScratchformerSeq2SeqModel",
    "ScratchformerForConditionalGeneration",
]
