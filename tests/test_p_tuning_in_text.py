"""P-tuning with its pseudo tokens in the text (`PTuningInText`, `templates.as_text`).

Parity is with the original P-tuning code's placement, rebuilt here in
PyTorch on transformers' GPT2LMHeadModel: the query holds pseudo tokens
whose input embeddings are swapped for the prompt encoder's rows, in order
("GPT Understands, Too", LAMA for GPT: [P x3, subject, P x3], the answer
read after the last pseudo token). Cached decoding must agree with teacher
forcing when the inputs end with a pseudo token: the prefill re-feeds the
last input token, which the delta swaps again at `decoder_step_input`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prompt_tuning import deltas
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.deltas import templates
from prompt_tuning.infer import predict
from prompt_tuning.model import contract
from prompt_tuning.model.decoder_only import DecoderOnlyLM
from prompt_tuning.model.gpt2 import GPT2LM
from prompt_tuning.model.pretrained import load_pretrained
from test_decoder_only import CAUSAL, CONFIG, N_INPUTS, TARGETS
from test_gpt2 import VOCAB, _hf_model


# -- the template written into the text -------------------------------------------
def test_as_text_numbers_pseudo_positions_across_blocks_and_keeps_anchor_words():
  assert (templates.as_text('[P:2] {inputs} [P:1] lives in', 'Anna')
          == '<extra_id_0> <extra_id_1> Anna <extra_id_2> lives in')
  assert (templates.as_text('[P:3] {inputs} [P:3]', 'Anna Smith')
          == '<extra_id_0> <extra_id_1> <extra_id_2> Anna Smith <extra_id_3> <extra_id_4> '
             '<extra_id_5>')


def test_the_t5_vocabulary_reads_the_markers_as_the_delta_expects():
  text = templates.as_text('[P:3] {inputs} [P:2] lives in', 'Anna')
  ids = vocab_lib.get_vocabulary().encode(text)
  delta = deltas.PTuningInText(template='[P:3] {inputs} [P:2] lives in')
  rows = [delta.marker_base - i for i in ids if 0 <= delta.marker_base - i < delta.length]
  assert rows == [0, 1, 2, 3, 4] and len(ids) == 5 + len(
      vocab_lib.get_vocabulary().encode('Anna lives in'))


@pytest.mark.parametrize('spec, error', [
    ('[P:3] {inputs} [T:58]', 'need to be words'),
    ('[P:3] lives in', 'exactly one {inputs}'),
    ('{inputs} lives in', 'at least one pseudo-prompt block'),
    ('[P:3] {inputs} [Q:1]', 'Unknown marker'),
])
def test_a_bad_template_in_text_is_one_line_naming_the_fix(spec, error):
  with pytest.raises(ValueError, match=error.replace('{', r'\{').replace('}', r'\}')):
    templates.as_text(spec, 'Anna')
  with pytest.raises(ValueError):
    deltas.PTuningInText(template=spec)


def test_only_pseudo_positions_count_and_the_checkpoint_record_rebuilds_the_delta():
  delta = deltas.PTuningInText(template='[P:3] {inputs} [P:3] lives in', encoder='mlp',
                               hidden=8, marker_base=99)
  assert delta.length == 6
  rebuilt = deltas.delta_from_config(delta.to_config())
  assert (rebuilt.template, rebuilt.marker_base, rebuilt.length) == (
      delta.template, 99, 6)


# -- parity with the original placement on transformers' GPT-2 -----------------------
def test_logits_equal_gpt2_given_the_original_codes_swapped_input_embeddings(tmp_path):
  hf = _hf_model(tmp_path / 'hf')
  config, params = load_pretrained(str(tmp_path / 'hf'))
  base = VOCAB - 1  # the last ids stand for pseudo tokens 0, 1, ...
  delta = deltas.PTuningInText(template='[P:3] {inputs} [P:3]', encoder='lstm',
                               marker_base=base)
  model = GPT2LM(config, deltas=(delta,))
  rng = np.random.RandomState(0)
  subject = rng.randint(1, VOCAB - 10, (2, 4))
  pseudo = base - np.arange(6)
  # Rows: [P P P subject P P P] then a few tokens; the second row padded at the end.
  tokens = np.concatenate([np.tile(pseudo[:3], (2, 1)), subject,
                           np.tile(pseudo[3:], (2, 1)), rng.randint(1, 40, (2, 3))], 1)
  mask = np.ones(tokens.shape, bool)
  mask[1, -2:] = False
  created = model.init(jax.random.PRNGKey(3), jnp.asarray(tokens), jnp.asarray(mask))
  variables = {'params': params, 'p_tuning': jax.tree_util.tree_map(np.asarray,
                                                                   created['p_tuning'])}
  ours = np.asarray(model.apply(variables, jnp.asarray(tokens), jnp.asarray(mask)))
  prompt = delta.prompt_of(variables)  # [6, d]: the encoder's output (PEFT parity elsewhere)

  with torch.no_grad():  # the original code's embed_input: swap the pseudo tokens' rows
    embeds = hf.transformer.wte(torch.tensor(tokens)).clone()
    for row in range(tokens.shape[0]):
      where = np.flatnonzero(np.isin(tokens[row], pseudo))
      assert len(where) == 6
      embeds[row, torch.tensor(where)] = torch.tensor(prompt)
    theirs = hf(inputs_embeds=embeds, attention_mask=torch.tensor(mask).long()).logits.numpy()
  scale = np.abs(theirs[mask]).max()
  relative = np.abs(ours - theirs)[mask].max() / scale
  print(f'P-tuning in the text vs GPT2LMHeadModel: max |diff| / max |logit| = {relative:.3g}')
  assert scale > 1.0 and relative <= 1e-4
  # The swap matters: the plain model reads the ids' own rows.
  plain = np.asarray(GPT2LM(config).apply({'params': params}, jnp.asarray(tokens),
                                          jnp.asarray(mask)))
  assert np.abs(plain - theirs)[mask].max() > 1e-2 * scale


# -- cached decoding when the inputs end with a pseudo token ---------------------------
def _rows_ending_in_pseudo(marker_base):
  """test_decoder_only's rows with their inputs' last token (and one before) a pseudo token."""
  targets = TARGETS.copy()
  for row, n in enumerate(N_INPUTS):
    targets[row, n - 1] = marker_base - 2   # the last input token: pseudo position 2
    targets[row, 0] = marker_base           # pseudo position 0
  inputs = np.concatenate([np.zeros((2, 1), int), targets[:, :-1]], 1) * (targets > 0)
  return inputs, targets


@pytest.mark.parametrize('backbone', ['decoder_only', 'gpt2'])
def test_cached_decoding_swaps_the_re_fed_pseudo_token_as_teacher_forcing_does(backbone):
  from test_gpt2_decoder_only import CONFIG as GPT2_CONFIG  # pylint: disable=g-import-not-at-top
  config = CONFIG if backbone == 'decoder_only' else GPT2_CONFIG
  delta = deltas.PTuningInText(template='[P:1] {inputs} [P:2]', encoder='mlp', hidden=8,
                               marker_base=config.vocab_size - 1)
  model = (DecoderOnlyLM if backbone == 'decoder_only' else GPT2LM)(config, deltas=(delta,))
  inputs, targets = _rows_ending_in_pseudo(delta.marker_base)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(inputs), jnp.asarray(targets))
  leaves, tree = jax.tree_util.tree_flatten(variables)
  rng = np.random.RandomState(1)  # decisive logits
  variables = jax.tree_util.tree_unflatten(
      tree, [np.asarray(x) + 0.5 * rng.randn(*np.shape(x)).astype(np.float32) for x in leaves])
  full = np.asarray(model.apply(variables, jnp.asarray(inputs), jnp.asarray(targets),
                                decoder_causal_attention=jnp.asarray(CAUSAL)))
  step, cache, start = contract.DECODER_ONLY.prefill(
      model, variables, jnp.asarray(inputs), jnp.asarray(CAUSAL), max_decode_length=3)
  np.testing.assert_array_equal(np.asarray(start), delta.marker_base - 2)
  logits, _ = step(start[:, None], cache)
  for row, n in enumerate(N_INPUTS):  # output n predicts the first target
    np.testing.assert_allclose(np.asarray(logits)[row], full[row, n], rtol=1e-5, atol=1e-5)
  # Without the swap at the step, the first prediction would read the id's own row.
  plain = type(model)(config)
  unswapped, _ = contract.DECODER_ONLY.prefill(
      plain, {'params': variables['params']}, jnp.asarray(inputs), jnp.asarray(CAUSAL),
      max_decode_length=3)[0](start[:, None], cache)
  assert np.abs(np.asarray(unswapped) - np.asarray(logits)).max() > 1e-3
  decoded = np.asarray(predict.decode(model, variables,
                                      (jnp.asarray(inputs), jnp.asarray(CAUSAL)), 1))
  np.testing.assert_array_equal(decoded[:, 0], full[np.arange(2), N_INPUTS].argmax(-1))
