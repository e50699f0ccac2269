"""Model features for tasks on a vocabulary where id 0 is a real token (GPT-2's '!').

    converter = GPT2DecoderFeatureConverter(bos_id=vocabulary.bos_id)
    ds = converter(task_dataset, {'inputs': 64, 'targets': 16})

seqio's `DecoderFeatureConverter` assumes id 0 is padding: it pads with 0,
starts every sequence with BOS 0 and sets `decoder_loss_weights` to
`targets != 0`. With GPT2Vocabulary id 0 is '!', so a '!' in the targets
would get no loss and the sequence would start with '!' instead of GPT-2's
`<|endoftext|>`. This converter is seqio's with two changes:

- BOS is `bos_id` (seqio's own `bos_id` argument);
- `decoder_loss_weights` come from each example's real length, so every
  target token (a '!' too) is weighted 1 and only the padding 0.

Padding is still id 0 at the end of a row (trailing), which is what
`gpt2.GPT2LM` reads as padding: a GPT-2 task appends EOS to its targets
(`gpt2_tasks`), so the last real token of a row is never 0. Everything else
(feature names, lengths, `decoder_causal_attention`) is seqio's; packing is
refused (seqio's packing reads every 0 as padding).

Why a converter and not the model: the batch then holds GPT-2's true ids
(BOS included), so teacher forcing, the prefill's start token, decoding and
rank classification see what a Hugging Face GPT-2 sees, with no flag in the
model; and the T5 vocabulary keeps seqio's converter untouched
(`contract.feature_converter_for` picks by `zero_is_token`).
"""
from typing import Any, Mapping

import seqio
import tensorflow as tf
from seqio import feature_converters as fc

# Ones over the real tokens, padded with 0: carries the length through padding.
_REAL = 'targets_real'


def zero_is_token(vocabulary: Any) -> bool:
  """True for a vocabulary whose id 0 is a token (GPT2Vocabulary), not padding."""
  return bool(getattr(vocabulary, 'zero_is_token', False))


def decoding_eos(vocabulary: Any, eos_id: int) -> int:
  """The EOS decoding stops at: the vocabulary's where id 0 is a token, else `eos_id`.

  T5X stops at the output vocabulary's EOS; the decoding config's default (1)
  is T5's, which in GPT-2 is '"'. T5 vocabularies keep the configured id.
  """
  return vocabulary.eos_id if zero_is_token(vocabulary) else eos_id


class _LM(fc.LMFeatureConverter):
  """Targets only: seqio's LM features, loss weights over the real length (unpacked)."""

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    ds = ds.map(lambda ex: {**ex, _REAL: tf.ones_like(ex['targets'])},
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, {**task_feature_lengths, _REAL: task_feature_lengths['targets']})
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    d['decoder_loss_weights'] = tf.cast(features[_REAL] > 0, tf.int32)
    return d


class _PrefixLM(fc.PrefixLMFeatureConverter):
  """Inputs + targets: seqio's prefix-LM features, loss weights over the real targets (unpacked)."""

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    # inputs_width_add_pos (inputs' width + 1 >= 1) is tiled over every real
    # position of the concatenation and padded with 0.
    real = features['inputs_width_add_pos'] > 0
    if self.loss_on_targets_only:
      real = real & (tf.range(tf.size(features['targets'])) >= features['inputs_width'])
    d['decoder_loss_weights'] = tf.cast(real, features['targets'].dtype)
    return d


class GPT2DecoderFeatureConverter(seqio.DecoderFeatureConverter):
  """seqio's `DecoderFeatureConverter` for a vocabulary whose id 0 is a token.

  Same features and lengths: decoder_target_tokens, decoder_input_tokens
  (shifted right, `bos_id` first), decoder_loss_weights [batch, length]
  (1 on every real target token, whatever its id), and with inputs
  decoder_causal_attention [batch, length]. Targets must not be empty (a
  GPT-2 task's end with EOS): seqio pads an empty one with a 0, which here
  would be a '!' to learn. No packing: seqio's packing itself reads every
  0 as padding (a '!' would get segment id 0), so `pack=True` is refused.
  """

  def __init__(self, bos_id: int, loss_on_targets_only: bool = True, pack: bool = False,
               **kwargs):
    if pack:
      raise ValueError("GPT2DecoderFeatureConverter does not pack: seqio's packing takes id 0 "
                       "for padding, which is '!' in GPT-2's vocabulary; use pack=False.")
    super().__init__(loss_on_targets_only=loss_on_targets_only, pack=pack, bos_id=bos_id,
                     **kwargs)
    common = dict(pack=pack, bos_id=bos_id, **kwargs)
    self.prefixlm_feature_converter = _PrefixLM(loss_on_targets_only=loss_on_targets_only,
                                                **common)
    common.pop('passthrough_features', None)  # seqio's LM converter takes none
    self.strictlm_feature_converter = _LM(**common)

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
               ) -> tf.data.Dataset:
    if 'suffixes' in task_feature_lengths:
      raise ValueError("GPT2DecoderFeatureConverter has no 'suffixes' (prefix-suffix LM) "
                       "form: give the task inputs and targets only.")
    return super().__call__(ds, task_feature_lengths)


__all__ = ['GPT2DecoderFeatureConverter', 'decoding_eos', 'zero_is_token']
