"""scratchformer's model: `ScratchformerConfig` and the `Scratchformer*` classes.

Importing this package registers them with transformers' Auto classes, so an installed
scratchformer loads checkpoints with plain `AutoModelForCausalLM.from_pretrained(dir)`. This file is
never copied into checkpoints: the remote-code payload is the two flat files beside it.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_scratchformer import PRESETS, ScratchformerConfig
from .modeling_scratchformer import (
    AUTO_MAP,
    ScratchformerForCausalLM,
    ScratchformerForMaskedLM,
    ScratchformerForSequenceClassification,
    ScratchformerForTokenClassification,
    ScratchformerModel,
    ScratchformerPreTrainedModel,
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
]
