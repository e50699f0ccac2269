"""The frozen backbones, T5.1.1 and a decoder-only LM, in Flax with T5X's parameter trees and numerics."""

from prompt_tuning.model.config import (DECODER_ONLY_SIZES, SIZES, DecoderOnlyConfig, T5Config,
                                        num_parameters)
from prompt_tuning.model.decoder_only import DecoderOnlyLM
from prompt_tuning.model.losses import (compute_weighted_cross_entropy,
                                        cross_entropy_with_logits, sequence_scores)
from prompt_tuning.model.t5 import Transformer

__all__ = [
    'DECODER_ONLY_SIZES', 'DecoderOnlyConfig', 'DecoderOnlyLM', 'SIZES', 'T5Config',
    'Transformer', 'compute_weighted_cross_entropy',
    'cross_entropy_with_logits', 'load_pretrained', 'num_parameters', 'sequence_scores',
]


def __getattr__(name):
  # Checkpoint readers pull in tensorstore and friends: load them on first use.
  if name in ('load_pretrained', 'CheckpointError'):
    from prompt_tuning.model import pretrained
    return getattr(pretrained, name)
  raise AttributeError(name)
