"""P-tuning v1: the encoders against PEFT's, templates, serving, export, resumption.

The encoders are checked against PEFT's `PromptEncoder` (torch) with the same
weights; templates against the plain backbone on the token sequence they
spell out; the prefix template against prompt tuning and against PEFT's
P_TUNING model loading our exported adapter.
"""
import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip('torch')
peft = pytest.importorskip('peft')
# pylint: disable=g-import-not-at-top
from prompt_tuning import gin_utils
from prompt_tuning.deltas import PromptTuning, combine, templates
from prompt_tuning.deltas.p_tuning import PTuning
from prompt_tuning.deltas.prompt import NotRecorded
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.interop.peft import export_peft_adapter, peft_files
from prompt_tuning.model import T5Config, Transformer, checkpoints, hf_checkpoint
from prompt_tuning.model.sites import attach

from model_gins import model_gin  # tests/, on the path as pytest's rootdir

REPO = pathlib.Path(__file__).resolve().parents[1]
# Heads x head width (24) != d (32): a misplaced tensor cannot fit by accident.
CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=3, head_dim=8, mlp_dim=40,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                  relative_attention_num_buckets=8, relative_attention_max_distance=20)
EOS = templates.EOS_ID


def _batch():
  """Inputs of different lengths, ending in EOS (seqio's) except row 2 (truncated)."""
  inputs = np.array([[5, 9, 12, 7, 3, 11, EOS],
                     [8, 4, EOS, 0, 0, 0, 0],
                     [6, 13, 10, 2, 9, 17, 22],
                     [EOS, 0, 0, 0, 0, 0, 0]])
  targets = np.array([[3, 5, 7, EOS], [9, EOS, 0, 0], [4, 4, EOS, 0], [EOS, 0, 0, 0]])
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
  return inputs, decoder_inputs, targets


BATCH = _batch()


@pytest.fixture(scope='module')
def params():
  tokens = jnp.asarray(BATCH[0])
  return jax.tree_util.tree_map(np.asarray, nn.unbox(Transformer(CONFIG).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens)['params']))


def _init(delta, params, seed=1):
  """{'params', 'p_tuning'}: the delta's trained (unmaterialized) variables from init."""
  variables = nn.unbox(Transformer(CONFIG, deltas=(delta,)).init(
      jax.random.PRNGKey(seed), *[jnp.asarray(x) for x in BATCH]))
  return {'params': params, delta.collection: jax.tree_util.tree_map(
      np.asarray, variables[delta.collection])}


def _logits(deltas, variables, batch=BATCH):
  return np.asarray(Transformer(CONFIG, deltas=tuple(deltas)).apply(
      variables, *[jnp.asarray(x) for x in batch]))


def _assert_same_logits(ours, theirs, targets=BATCH[2], tolerance=1e-5):
  real = targets > 0  # padded queries are masked differently; compare real targets
  np.testing.assert_allclose(ours[real], theirs[real], rtol=tolerance, atol=tolerance)


# -- the encoders against PEFT's ----------------------------------------------------

def _peft_encoder(delta, tree, width):
  """PEFT's PromptEncoder holding our weights (torch layout: [out, in])."""
  from peft.tuners.p_tuning.model import PromptEncoder  # pylint: disable=g-import-not-at-top
  hidden = delta.hidden or (width // 2 if delta.encoder == 'lstm' else width)
  encoder = PromptEncoder(peft.PromptEncoderConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=delta.length, token_dim=width,
      num_transformer_submodules=1, num_attention_heads=CONFIG.num_heads,
      num_layers=CONFIG.num_encoder_layers, encoder_hidden_size=hidden,
      encoder_reparameterization_type=delta.encoder.upper()))
  rng = np.random.RandomState(5)
  weights = {'embedding.weight': tree['embeddings']}
  for name, value in tree.get('lstm', {}).items():
    kind, _, suffix = name.partition('_l')
    if kind == 'bias':
      # torch has two biases; only their sum acts. Split ours at random.
      share = rng.normal(size=value.shape).astype(np.float32)
      weights[f'lstm_head.bias_ih_l{suffix}'] = share
      weights[f'lstm_head.bias_hh_l{suffix}'] = value - share
    else:
      torch_name = {'w_ih': 'weight_ih', 'w_hh': 'weight_hh'}[kind]
      weights[f'lstm_head.{torch_name}_l{suffix}'] = value.T
  for i in range(len(tree['mlp']) // 2):
    weights[f'mlp_head.{2 * i}.weight'] = tree['mlp'][f'kernel_{i}'].T
    weights[f'mlp_head.{2 * i}.bias'] = tree['mlp'][f'bias_{i}']
  # Every torch tensor is one of ours, and the other way round.
  assert set(weights) == set(encoder.state_dict()), (sorted(weights),
                                                     sorted(encoder.state_dict()))
  encoder.load_state_dict({k: torch.tensor(np.ascontiguousarray(v)) for k, v in weights.items()})
  return encoder.eval()


@pytest.mark.parametrize('encoder,hidden', [('lstm', None), ('lstm', 6), ('mlp', None),
                                            ('mlp', 12)])
def test_encoder_output_equals_peft_prompt_encoder(params, encoder, hidden):
  delta = PTuning(template='[P:2] {inputs} [P:3]', encoder=encoder, hidden=hidden)
  tree = _init(delta, params)[delta.collection][delta.name]
  theirs = _peft_encoder(delta, tree, CONFIG.emb_dim)
  with torch.no_grad():  # PEFT feeds its encoder the ids 0..P-1, [1, P]
    want = theirs(torch.arange(delta.length)[None]).numpy()[0]
  ours = delta.prompt_of({delta.collection: {delta.name: tree}})
  assert ours.shape == (5, CONFIG.emb_dim)
  np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
  # The bidirectional LSTM mixes positions: changing the last input row
  # changes the first output row (the MLP works row by row).
  moved = dict(tree, embeddings=tree['embeddings'].copy())
  moved['embeddings'][-1] += 1.0
  first = delta.prompt_of({delta.collection: {delta.name: moved}})[0]
  assert np.allclose(first, ours[0]) == (encoder == 'mlp')


# -- templates ------------------------------------------------------------------------


def test_placement_layout_by_hand():
  template = templates.parse('[P:2] {inputs} [T:50,51] [P:1]')
  assert (template.length, template.num_prompt, template.num_before) == (5, 3, 2)
  tokens = np.array([[3, 4, EOS, 0, 0], [7, 8, 9, 2, 0], [0, 0, 0, 0, 0], [6, 0, 9, EOS, 0]])
  # Template positions shown as -1 (prompt row 0), -2, -50, -51, -3; tokens as themselves.
  shown = -np.array([[1, 2, 50, 51, 3]], np.float32)[..., None]
  combined, mask = templates.place(template, jnp.asarray(shown),
                                   jnp.asarray(tokens, jnp.float32)[..., None],
                                   jnp.asarray(tokens > 0), jnp.asarray(tokens))
  assert combined.shape == (4, 10, 1) and mask.shape == (4, 10)
  np.testing.assert_array_equal(np.asarray(combined)[..., 0], [
      [-1, -2, 3, 4, -50, -51, -3, EOS, 0, 0],   # the EOS closes the whole input
      [-1, -2, 7, 8, 9, 2, -50, -51, -3, 0],     # no EOS (truncated): nothing moves
      [-1, -2, -50, -51, -3, 0, 0, 0, 0, 0],     # an empty example: the template alone
      [-1, -2, 6, 0, 9, -50, -51, -3, EOS, 0]])  # interior padding stays, masked
  np.testing.assert_array_equal(np.asarray(mask), [
      [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
      [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
      [1, 1, 1, 0, 1, 1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(templates.placed_mask(template, jnp.asarray(tokens > 0),
                                                      jnp.asarray(tokens)), mask)
  # eos_id=None keeps the EOS in the {inputs} slot.
  kept, _ = templates.place(template, jnp.asarray(shown),
                            jnp.asarray(tokens, jnp.float32)[..., None],
                            jnp.asarray(tokens > 0), jnp.asarray(tokens), eos_id=None)
  np.testing.assert_array_equal(np.asarray(kept)[0, :, 0],
                                [-1, -2, 3, 4, EOS, -50, -51, -3, 0, 0])


def _served(delta, prompt):
  return {delta.collection: {delta.name: {'prompt': np.asarray(prompt, np.float32)}}}


def test_template_equals_the_plain_model_on_the_tokens_it_spells_out(params):
  # Prompt rows that are embeddings of the ids 30, 31, 32: the template then
  # spells out a token sequence the plain backbone can read.
  delta = PTuning(template='[P:2] {inputs} [T:40,41] [P:1]', encoder='mlp')
  pseudo = [30, 31, 32]
  variables = {'params': params,
               **_served(delta, params['token_embedder']['embedding'][pseudo])}
  inputs, decoder_inputs, targets = BATCH
  rows = []
  for row in inputs:
    real = [int(t) for t in row[:np.max(np.nonzero(row)[0], initial=-1) + 1]]
    eos = [EOS] if real and real[-1] == EOS else []
    real = real[:len(real) - len(eos)]
    rows.append(pseudo[:2] + real + [40, 41] + pseudo[2:] + eos)
  spelled = np.zeros((len(rows), inputs.shape[1] + 5), np.int64)
  for i, row in enumerate(rows):
    spelled[i, :len(row)] = row
  assert spelled[1].tolist() == [30, 31, 8, 4, 40, 41, 32, EOS, 0, 0, 0, 0]
  theirs = _logits((), {'params': params}, (spelled, decoder_inputs, targets))
  _assert_same_logits(_logits((delta,), variables), theirs)
  # The encoder_mask site (decoding's cross-attention mask, from the tokens
  # alone) is the embedded input's mask.
  def masks(model, tokens):
    with attach(model.deltas):
      return model.embed_encoder_inputs(tokens)[1], model.encoder_mask(tokens)
  embedded_mask, site_mask = Transformer(CONFIG, deltas=(delta,)).apply(
      variables, jnp.asarray(inputs), method=masks)
  np.testing.assert_array_equal(embedded_mask, site_mask)
  np.testing.assert_array_equal(site_mask, spelled > 0)


@pytest.mark.parametrize('encoder', ['lstm', 'mlp'])
def test_prefix_template_equals_prompt_tuning(params, encoder):
  delta = PTuning(template='[P:4] {inputs}', encoder=encoder)
  variables = _init(delta, params)
  prompt = delta.prompt_of(variables)
  tuning = PromptTuning(length=4, combine=combine.prefix)
  ours = _logits((delta,), variables)
  np.testing.assert_allclose(ours, _logits((tuning,), tuning.with_prompt(
      {'params': params}, prompt)), rtol=1e-6, atol=1e-6)
  # A suffix template keeping the EOS in its slot is prompt tuning's suffix.
  delta = PTuning(template='{inputs} [P:4]', encoder=encoder, eos_id=None)
  variables = _init(delta, params)
  tuning = PromptTuning(length=4, combine=combine.suffix)
  np.testing.assert_allclose(_logits((delta,), variables), _logits((tuning,), tuning.with_prompt(
      {'params': params}, delta.prompt_of(variables))), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('template,message', [
    ('[P:3]', r'0 \{inputs\} slots; it needs exactly one'),
    ('{inputs} [P:2] {inputs}', r'2 \{inputs\} slots'),
    ('[X:3] {inputs}', r"Unknown marker '\[X:3\]'.*use \[P:n\]"),
    ('{input} [P:3]', r"Unknown marker '\{input\}'"),
    ('[P:2 {inputs}', r'Unknown or unbalanced marker'),
    ('[P:0] {inputs}', r"'\[P:0\]'.*at least 1"),
    ('[P:2] {inputs} [T:0]', r'0 is padding'),
    ('{inputs} [T:58]', r'no pseudo-prompt block; add one'),
    ('[P:2] {inputs} ?', r"anchor text '\?' but no vocabulary: set vocabulary.*\[T:id"),
])
def test_bad_templates_are_clear_errors(template, message):
  with pytest.raises(ValueError, match=message) as error:
    PTuning(template=template)
  assert '\n' not in str(error.value)


def test_bad_encoder_and_missing_variables(params):
  with pytest.raises(ValueError, match=r"Unknown P-tuning encoder 'gru'; use one of"):
    PTuning(encoder='gru')
  with pytest.raises(ValueError, match=r"No P-tuning variables: pass variables\['p_tuning'\]"):
    _logits((PTuning(),), {'params': params})
  # A materialized prompt of another length.
  with pytest.raises(ValueError, match=r'prompt has shape \(5, 32\).*\(6, 32\)'):
    _logits((PTuning(),), {'params': params, **_served(PTuning(), np.zeros((5, 32)))})
  wide = PTuning(hidden=4)
  with pytest.raises(ValueError, match='another encoder or hidden size'):
    _logits((PTuning(),), {'params': params, 'p_tuning': _init(wide, params)['p_tuning']})


def test_anchor_text_is_recorded_as_ids(shared_data):
  vocabulary = str(shared_data / 't5_sentencepiece.model')
  import sentencepiece  # pylint: disable=g-import-not-at-top
  ids = sentencepiece.SentencePieceProcessor(model_file=vocabulary).encode('Is it ?')
  delta = PTuning(template='[P:3] {inputs}  Is it ? [P:3]', vocabulary=vocabulary)
  config = delta.to_config()
  assert config['template'] == f'[P:3] {{inputs}} [T:{",".join(map(str, ids))}] [P:3]'
  assert len(ids) >= 2 and delta.length == 6
  rebuilt = PTuning.from_config(json.loads(json.dumps(config)))
  assert rebuilt.vocabulary is None and rebuilt.parsed == delta.parsed
  assert rebuilt.to_config() == config and isinstance(rebuilt.init, NotRecorded)


# -- serving: materialized, banked ----------------------------------------------------


@pytest.mark.parametrize('encoder', ['lstm', 'mlp'])
def test_materialized_serving_equals_the_encoder(params, encoder):
  delta = PTuning(template='[P:2] {inputs} [T:7] [P:2]', encoder=encoder)
  variables = _init(delta, params)
  served = delta.materialize(variables)
  assert jax.tree_util.tree_map(np.shape, served[delta.collection]) == {
      delta.name: {'prompt': (4, CONFIG.emb_dim)}}
  assert delta.materialize(served) is served  # already served: unchanged
  np.testing.assert_allclose(_logits((delta,), served), _logits((delta,), variables),
                             rtol=1e-6, atol=1e-6)
  # A bank of two materialized prompts [2, P, d]: each example gets its own.
  other = delta.materialize(_init(delta, params, seed=7))
  shared, stacked = bank_lib.stack([{delta.collection: v[delta.collection]}
                                    for v in (served, other)], (delta,))
  assert stacked[delta.collection][delta.name]['prompt'].shape == (2, 4, CONFIG.emb_dim)
  index = jnp.asarray([1, 0, 0, 1])
  banked = bank_lib.select(stacked, index)
  mixed = _logits((delta,), {'params': params, **banked})
  for number, alone in enumerate((served, other)):
    rows = np.flatnonzero(np.asarray(index) == number)
    np.testing.assert_allclose(mixed[rows], _logits((delta,), alone)[rows], rtol=1e-5,
                               atol=1e-5)
  assert not shared


# -- export: .npy and PEFT -------------------------------------------------------------


@pytest.fixture(scope='module')
def hf_folder(params, tmp_path_factory):
  folder = tmp_path_factory.mktemp('hf') / 't5'
  hf_checkpoint.write_hf_t5(CONFIG, params, str(folder))
  return folder


def _peft_logits(folder, adapter):
  transformers = pytest.importorskip('transformers')
  model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
  wrapped = peft.PeftModel.from_pretrained(model, str(adapter)).eval()
  assert wrapped.peft_config['default'].peft_type.value == 'P_TUNING'
  inputs, decoder_inputs, _ = BATCH
  with torch.no_grad():
    return wrapped(input_ids=torch.tensor(inputs), attention_mask=torch.tensor(inputs > 0).long(),
                   decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()


@pytest.mark.parametrize('encoder', ['lstm', 'mlp'])
def test_peft_loads_the_exported_adapter_and_gives_our_logits(params, hf_folder, tmp_path,
                                                              encoder):
  delta = PTuning(template='[P:5] {inputs}', encoder=encoder)
  variables = _init(delta, params)
  # The .npy export: the encoder's output, [P, d].
  (npy,) = delta.export(delta.materialize(variables), str(tmp_path))
  assert pathlib.Path(npy).name == 'p_tuning.npy'
  np.testing.assert_array_equal(np.load(npy), delta.prompt_of(variables))
  # The PEFT adapter, written from a checkpoint of the trained variables.
  run = tmp_path / 'run'
  trainable = {delta.collection: variables[delta.collection]}
  checkpointer = checkpoints.DeltaCheckpointer(str(run))
  checkpointer.save(5, {'step': jnp.asarray(5), 'trainable': trainable,
                        'opt_state': optax.adafactor(0.3).init(trainable)},
                    {'deltas': [delta.to_config()], 'base_checkpoint': str(hf_folder),
                     'model_config': dataclasses.asdict(CONFIG)})
  checkpointer.close()
  adapter = export_peft_adapter(str(run), str(tmp_path / 'adapter'))
  written = json.loads((tmp_path / 'adapter' / 'adapter_config.json').read_text())
  assert (written['peft_type'], written['num_virtual_tokens'], written['token_dim'],
          written['encoder_reparameterization_type']) == ('P_TUNING', 5, 32, encoder.upper())
  ours = _logits((delta,), variables)
  theirs = _peft_logits(hf_folder, adapter)
  _assert_same_logits(ours, theirs, tolerance=1e-4)
  assert not np.allclose(ours, _logits((), {'params': params}), atol=1e-2)


def test_peft_export_needs_a_prefix_template(params):
  delta = PTuning(template='[P:2] {inputs} [P:2]')
  with pytest.raises(ValueError, match=r'PEFT prepends.*not a prefix "\[P:n\] \{inputs\}"'):
    peft_files((delta,), _init(delta, params), CONFIG)


# -- training: resumption keeps the encoder ------------------------------------------

TINY = T5Config(emb_dim=4, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
                head_dim=2, mlp_dim=8, dropout_rate=0.0, relative_attention_num_buckets=4)
BASE_STEP = 3  # shared/data/t5x_t5_1_1_tiny/checkpoint_3


def _train(tmp_path, shared_data, model_dir, train_steps):
  """A P-tuning run in process (the CLI's flags), to the absolute step `train_steps`."""
  import sys  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train import trainer  # pylint: disable=g-import-not-at-top
  (tmp_path / 'tiny.gin').write_text(model_gin(TINY))
  files = [str(tmp_path / 'tiny.gin'), 'gin/runs/delta_tune.gin', 'gin/methods/p_tuning.gin']
  bindings = [f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'fixture_sentiment'",
              "MIXTURE_OR_TASK_MODULE = 'fixture_tasks'",
              f"INITIAL_CHECKPOINT_PATH = '{shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'}'",
              f'TRAIN_STEPS = {train_steps}', 'BATCH_SIZE = 4',
              "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}", 'LOG_PERIOD = 1',
              'EVAL_PERIOD = None', 'CHECKPOINT_PERIOD = 2', 'DROPOUT_RATE = 0.1',
              'LEARNING_RATE = 0.01', "P_TUNING_TEMPLATE = '[P:2] {inputs} ? [P:2]'"]
  if str(REPO / 'tests') not in sys.path:
    sys.path.insert(0, str(REPO / 'tests'))
  gin_utils.parse_gin(files, bindings)
  try:
    return trainer.train()
  finally:
    import gin  # pylint: disable=g-import-not-at-top
    gin.clear_config()


@pytest.mark.slow  # three short runs: ~80 s on 2 CPU cores
def test_interrupted_run_resumes_to_the_same_encoder_and_prompt(tmp_path, shared_data,
                                                                monkeypatch, caplog):
  monkeypatch.chdir(REPO)  # the run files name gin/... relative to the repository
  caplog.set_level('INFO')
  straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
  _train(tmp_path, shared_data, straight, BASE_STEP + 4)
  _train(tmp_path, shared_data, stopped, BASE_STEP + 2)  # stops after checkpoint_5
  state = _train(tmp_path, shared_data, stopped, BASE_STEP + 4)  # resumes from it
  assert f'Resumed from {stopped}/checkpoint_{BASE_STEP + 2}' in caplog.text
  assert int(state.step) == BASE_STEP + 4
  final = f'checkpoint_{BASE_STEP + 4}'
  ours, theirs = (checkpoints.read_delta(str(d / final)) for d in (stopped, straight))
  flat = lambda tree: {'/'.join(map(str, k)): v for k, v in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  assert set(flat(ours)) == set(flat(theirs))
  # The encoder is what the checkpoint holds: the LSTM, its head, the inputs.
  assert any('w_ih_l1_reverse' in k for k in flat(ours)) and len(flat(ours)) == 17
  for path, value in flat(theirs).items():
    np.testing.assert_array_equal(flat(ours)[path], value, err_msg=path)
  prompt = np.load(stopped / final / 'p_tuning.npy')
  np.testing.assert_array_equal(prompt, np.load(straight / final / 'p_tuning.npy'))
  assert prompt.shape == (4, TINY.emb_dim)
  # Training moved it: the run's first checkpoint holds another prompt.
  assert not np.array_equal(prompt, np.load(straight / f'checkpoint_{BASE_STEP + 1}' /
                                            'p_tuning.npy'))
