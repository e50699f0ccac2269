"""Runs a pretrained T5 checkpoint once: tokenize, score a target, decode greedily.

    python tools/forward.py                                   # the shipped tiny T5X checkpoint
    python tools/forward.py --checkpoint /path/to/hf_t5_folder --input "translate ..."

Until the training pipeline lands this is the project's main job: it shows
that a real T5X checkpoint (or a Hugging Face T5 folder) loads into the Flax
network and runs on the T5 vocabulary. The shipped checkpoint is a 2-layer,
4-wide model trained for 3 steps by T5X's tests, so its outputs are noise;
the point is the plumbing, which is the same for XXL.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.model import Transformer, load_pretrained, num_parameters, sequence_scores

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'prompt_tuning', 'assets')
DEFAULT_CHECKPOINT = os.path.join(ASSETS, 't5x_t5_1_1_tiny', 'checkpoint_3')
DEFAULT_VOCABULARY = os.path.join(ASSETS, 't5_sentencepiece.model')


def greedy_decode(model, params, encoder_tokens, length: int) -> np.ndarray:
  """Greedy decoding with the key/value cache; [b, l] -> [b, length]."""
  batch = encoder_tokens.shape[0]
  placeholder = jnp.zeros((batch, length), jnp.int32)
  cache = model.init(jax.random.PRNGKey(0), encoder_tokens, placeholder, placeholder,
                     decode=True, max_decode_length=length)['cache']
  encoded = model.apply({'params': params}, encoder_tokens, method=Transformer.encode)

  @jax.jit
  def step(cache, token):
    logits, mutated = model.apply(
        {'params': params, 'cache': cache}, encoded, encoder_tokens, token[:, None],
        decode=True, max_decode_length=length, method=Transformer.decode,
        mutable=['cache'])
    return mutated['cache'], jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)

  token = jnp.zeros((batch,), jnp.int32)  # T5 starts decoding from id 0
  out = []
  for _ in range(length):
    cache, token = step(cache, token)
    out.append(token)
  return np.stack(out, axis=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', default=DEFAULT_CHECKPOINT,
                      help='legacy T5X checkpoint dir or Hugging Face T5 folder')
  parser.add_argument('--vocabulary', default=DEFAULT_VOCABULARY,
                      help='SentencePiece model (T5\'s, with 100 extra ids)')
  parser.add_argument('--input', default='rte hypothesis: The cat sat. premise: A cat sat on the mat.')
  parser.add_argument('--target', default='entailment')
  parser.add_argument('--decode_length', type=int, default=8)
  args = parser.parse_args()

  import seqio  # pylint: disable=g-import-not-at-top  (slow: pulls in TensorFlow)
  vocabulary = seqio.SentencePieceVocabulary(args.vocabulary, extra_ids=100)

  start = time.perf_counter()
  config, params = load_pretrained(args.checkpoint)
  print(f'loaded {args.checkpoint} in {time.perf_counter() - start:.2f} s')
  print(f'  {config}')
  print(f'  {num_parameters(config):,} parameters; vocabulary of '
        f'{vocabulary.vocab_size} ids for an embedding of {config.vocab_size} rows')
  if vocabulary.vocab_size > config.vocab_size:
    raise SystemExit(f'The vocabulary ({vocabulary.vocab_size} ids) does not fit the '
                     f'model\'s embedding ({config.vocab_size} rows).')

  model = Transformer(config.replace(dropout_rate=0.0))
  inputs = jnp.asarray([vocabulary.encode(args.input) + [1]], jnp.int32)  # + EOS
  targets = jnp.asarray([vocabulary.encode(args.target) + [1]], jnp.int32)
  decoder_inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], 1)

  apply = jax.jit(lambda p, i, d, t: model.apply({'params': p}, i, d, t))
  logits = apply(params, inputs, decoder_inputs, targets).block_until_ready()
  start = time.perf_counter()
  logits = apply(params, inputs, decoder_inputs, targets).block_until_ready()
  seconds = time.perf_counter() - start
  score = float(sequence_scores(logits, targets)[0])
  print(f'input  ({inputs.shape[1]} tokens): {args.input!r}')
  print(f'target ({targets.shape[1]} tokens): {args.target!r}')
  print(f'  logits {tuple(logits.shape)} {logits.dtype}, forward pass {seconds * 1e3:.1f} ms')
  print(f'  log-likelihood of the target: {score:.3f} '
        f'(uniform guess: {targets.shape[1] * -np.log(config.vocab_size):.3f})')

  decoded = greedy_decode(model, params, inputs, args.decode_length)[0].tolist()
  print(f'greedy decoding, {args.decode_length} steps with the key/value cache:')
  print(f'  ids  {decoded}')
  print(f'  text {vocabulary.decode(decoded)!r}')


if __name__ == '__main__':
  main()
