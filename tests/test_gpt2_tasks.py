"""seqio tasks on GPT-2's byte-level BPE, where id 0 is '!' (gpt2_tasks, gpt2_features).

A tiny byte-level BPE is trained here (the `tokenizers` library, '!' is id 0
as in GPT-2, `<|endoftext|>` the last id) and a tiny random GPT-2 is written
as a Hugging Face folder and read with the project's converter. Texts hold
'!' in inputs and targets, at the start, middle and end, and a target of
only '!'. Checked against transformers' GPT2LMHeadModel on the same ids:
the features (BOS first, loss weights on every target token), logits, the
loss, scores, rank classification and greedy decoding; then the one-line
errors, and (slow) the train and infer CLIs on such a task.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf
import tokenizers
import torch
import transformers

from prompt_tuning.model import gpt2_features
from prompt_tuning.data import gpt2_tasks
from prompt_tuning.infer import predict
from prompt_tuning.infer.evaluation import InferenceEvaluator
from prompt_tuning.model import contract
from prompt_tuning.model.config import DecoderOnlyConfig, T5Config
from prompt_tuning.model.decoder_only import DecoderOnlyLM
from prompt_tuning.model.gpt2 import GPT2LM
from prompt_tuning.model.gpt2_checkpoint import read_hf_gpt2
from prompt_tuning.model.t5 import Transformer
from prompt_tuning.train.step import batch_loss

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK, LM_TASK = 'gpt2_bang', 'gpt2_bang_lm'
LENGTHS = {'inputs': 8, 'targets': 6}
# No '!!' in the training texts, so the BPE has no '!!' merge: '!!!' is three '!' (id 0).
BPE_TEXTS = ['Hello world! Say hi! ok', 'Wow! That is great!', 'no bang here, the answer is yes',
             'a!b c!d world', 'hi! hi! yes! no']
EXAMPLES = [
    ('Say hi', 'hi!'),           # a target ending in '!'
    ('Wow! That', '!!!'),        # '!' in the inputs; a target of only '!'
    ('a!b', '!d world'),         # a target starting with '!'
    ('no bang here', ' yes'),    # no '!' at all
]


@pytest.fixture(scope='module')
def vocab_folder(tmp_path_factory) -> pathlib.Path:
  folder = tmp_path_factory.mktemp('gpt2_bpe')
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(BPE_TEXTS * 3, vocab_size=300, min_frequency=1, show_progress=False)
  bpe.save_model(str(folder))
  vocab = json.loads((folder / 'vocab.json').read_text())
  assert vocab['!'] == 0 and '!!' not in vocab  # GPT-2's layout, which the tests rely on
  vocab['<|endoftext|>'] = len(vocab)
  (folder / 'vocab.json').write_text(json.dumps(vocab))
  return folder


def _source(examples, targets_only=False) -> seqio.DataSource:
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    if targets_only:
      return tf.data.Dataset.from_tensor_slices({'targets': [i + t for i, t in examples]})
    return tf.data.Dataset.from_tensor_slices({'inputs': [i for i, _ in examples],
                                               'targets': [t for _, t in examples]})
  return seqio.FunctionDataSource(dataset_fn, splits=['train', 'validation'])


@pytest.fixture(scope='module')
def vocabulary(vocab_folder):
  gpt2_tasks.register_text_task(TASK, _source(EXAMPLES), [], str(vocab_folder))
  gpt2_tasks.register_text_task(LM_TASK, _source(EXAMPLES, targets_only=True), [],
                                str(vocab_folder))
  return gpt2_tasks.vocabulary(str(vocab_folder))


@pytest.fixture(scope='module')
def gpt2(tmp_path_factory, vocabulary):
  """(transformers' GPT2LMHeadModel, our GPT2LM, its params), the same random weights."""
  folder = tmp_path_factory.mktemp('gpt2_hf')
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=vocabulary.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4,
      embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)).eval()
  with torch.no_grad():  # every weight random (HF's init leaves biases 0 and norms 1)
    for name, p in hf.named_parameters():
      if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight')):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_((0.2 if p.ndim == 1 else 0.15) * torch.randn_like(p))
  hf.save_pretrained(str(folder), safe_serialization=True)
  config, params = read_hf_gpt2(str(folder))
  return hf, GPT2LM(config), params


def _batch(task: str, model) -> dict:
  lengths = LENGTHS if task == TASK else {'targets': sum(LENGTHS.values())}
  ds = seqio.get_dataset(task, lengths, contract.feature_converter_for(model, task),
                         dataset_split='validation', shuffle=False, num_epochs=1,
                         batch_size=len(EXAMPLES))
  return next(ds.as_numpy_iterator())


def _sequences(vocabulary):
  """[(input ids, target ids + EOS)] per example: what GPT-2 should read."""
  return [(vocabulary.encode(i), vocabulary.encode(t) + [vocabulary.eos_id])
          for i, t in EXAMPLES]


def _hf_log_probs(hf, tokens: np.ndarray, real: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    logits = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(real).long()).logits
  return torch.log_softmax(logits.double(), -1).numpy()


# -- features -------------------------------------------------------------------
def test_features_start_with_bos_and_weight_every_target_token(vocabulary, gpt2):
  _, model, _ = gpt2
  eos = vocabulary.eos_id
  batch = _batch(TASK, model)
  bangs = 0
  for row, (inputs, targets) in enumerate(_sequences(vocabulary)):
    n, sequence = len(inputs), inputs + targets
    assert targets[:-1] == vocabulary.encode(EXAMPLES[row][1])  # '!' stays '!' (id 0)
    width = len(sequence)
    np.testing.assert_array_equal(batch['decoder_target_tokens'][row, :width], sequence)
    np.testing.assert_array_equal(batch['decoder_input_tokens'][row, :width],
                                  [eos] + sequence[:-1])  # GPT-2's BOS, not '!'
    weights = batch['decoder_loss_weights'][row]
    np.testing.assert_array_equal(weights, (np.arange(weights.size) >= n) &
                                  (np.arange(weights.size) < width))
    np.testing.assert_array_equal(batch['decoder_causal_attention'][row],
                                  np.arange(weights.size) <= n)
    bangs += targets.count(0)
  assert bangs >= 5  # '!' in targets: at the end, only '!', at the start
  assert np.all(batch['decoder_input_tokens'][:, 0] == eos)
  # The collision the converter exists for: seqio's own drops every target '!'.
  plain = next(seqio.get_dataset(TASK, LENGTHS, seqio.DecoderFeatureConverter(pack=False),
                                 dataset_split='validation', shuffle=False, num_epochs=1,
                                 batch_size=len(EXAMPLES)).as_numpy_iterator())
  dropped = (batch['decoder_loss_weights'] > 0) & (plain['decoder_loss_weights'] == 0)
  assert dropped.sum() == bangs and np.all(plain['decoder_input_tokens'][:, 0] == 0)

  # Targets only (a language-modelling task): the weights cover the whole text + EOS.
  lm = _batch(LM_TASK, model)
  for row, (inputs, targets) in enumerate(_sequences(vocabulary)):
    sequence = vocabulary.encode(''.join(EXAMPLES[row])) + [eos]
    np.testing.assert_array_equal(lm['decoder_target_tokens'][row, :len(sequence)], sequence)
    assert lm['decoder_input_tokens'][row, 0] == eos
    np.testing.assert_array_equal(lm['decoder_loss_weights'][row],
                                  np.arange(lm['decoder_loss_weights'].shape[1]) < len(sequence))


def test_packing_is_refused_in_one_line(vocabulary):
  """seqio's packing gives every id 0 segment id 0 (padding): a '!' would vanish."""
  with pytest.raises(ValueError) as error:
    gpt2_features.GPT2DecoderFeatureConverter(vocabulary.eos_id, pack=True)
  assert '\n' not in str(error.value) and 'pack=False' in str(error.value)


def test_a_target_of_only_bangs_is_not_empty(vocabulary, gpt2):
  hf, model, params = gpt2
  batch = _batch(TASK, model)
  row = 1
  n = len(vocabulary.encode(EXAMPLES[row][0]))
  assert batch['decoder_target_tokens'][row, n:n + 3].tolist() == [0, 0, 0]
  assert batch['decoder_loss_weights'][row].sum() == 4  # three '!' and EOS
  scores = np.asarray(contract.DECODER_ONLY.score(
      model, {'params': params},
      *[jnp.asarray(batch[k]) for k in contract.DECODER_ONLY.score_features]))
  width = np.array([len(i) + len(t) for i, t in _sequences(vocabulary)])
  real = np.arange(batch['decoder_target_tokens'].shape[1])[None, :] < width[:, None]
  log_probs = _hf_log_probs(hf, batch['decoder_input_tokens'], real)
  token = np.take_along_axis(log_probs, batch['decoder_target_tokens'][..., None], -1)[..., 0]
  want = (token * batch['decoder_loss_weights']).sum(1)
  np.testing.assert_allclose(scores, want, rtol=1e-4)
  assert abs(want[row]) > 1.0  # four scored tokens, not an empty target


# -- parity with transformers ---------------------------------------------------
def test_logits_and_loss_equal_hugging_face_on_the_same_ids(vocabulary, gpt2):
  hf, model, params = gpt2
  for task in (TASK, LM_TASK):
    batch = _batch(task, model)
    weights = batch['decoder_loss_weights']
    width = np.array([len(i) + len(t) for i, t in _sequences(vocabulary)])
    real = np.arange(weights.shape[1])[None, :] < width[:, None]
    # GPT-2's BOS first and every target token weighted (EOS, '!'), as GPT-2 is trained.
    assert np.all(batch['decoder_input_tokens'][:, 0] == vocabulary.eos_id)
    targets = [len(t) for _, t in _sequences(vocabulary)]
    assert weights.sum() == (sum(targets) if task == TASK else width.sum())
    ours = np.asarray(contract.DECODER_ONLY.logits(
        model, {'params': params}, {k: jnp.asarray(v) for k, v in batch.items()}))
    with torch.no_grad():
      theirs = hf(input_ids=torch.tensor(batch['decoder_input_tokens']),
                  attention_mask=torch.tensor(real).long()).logits.numpy()
    scale = np.abs(theirs[real]).max()
    assert scale > 1.0
    assert np.abs(ours - theirs)[real].max() <= 1e-4 * scale, task
    # The loss the train step minimises: cross-entropy summed over every target token.
    _, metrics = batch_loss(model, {'params': params},
                            {k: jnp.asarray(v) for k, v in batch.items()}, z_loss=0.0)
    log_probs = _hf_log_probs(hf, batch['decoder_input_tokens'], real)
    token = np.take_along_axis(log_probs, batch['decoder_target_tokens'][..., None], -1)[..., 0]
    want = -(token * weights).sum()
    np.testing.assert_allclose(float(metrics['loss']), want, rtol=1e-4)
    assert float(metrics['weight_sum']) == weights.sum()


def test_rank_classification_scores_labels_with_bangs_as_hugging_face(vocabulary, gpt2):
  hf, model, params = gpt2
  batch = _batch(TASK, model)
  labels = [vocabulary.encode(t) + [vocabulary.eos_id] for t in ('hi!', '!!!', '!d', ' yes')]
  arch = contract.DECODER_ONLY
  features = [jnp.asarray(batch[k]) for k in arch.predict_features]
  context = arch.rank_context(model, {'params': params}, *features,
                              label_length=max(map(len, labels)))
  scores = np.asarray(arch.label_scores(model, {'params': params}, context, labels))
  for row, (inputs, _) in enumerate(_sequences(vocabulary)):
    for j, label in enumerate(labels):
      tokens = [vocabulary.eos_id] + inputs + label
      log_probs = _hf_log_probs(hf, np.array([tokens[:-1]]), np.ones((1, len(tokens) - 1)))
      want = sum(log_probs[0, len(inputs) + k, t] for k, t in enumerate(label))
      np.testing.assert_allclose(scores[row, j], want, rtol=1e-4, atol=1e-4)


def _decode(model, params, batch, vocabulary) -> np.ndarray:
  """Greedy predictions [b, targets length] through the project's decoding path."""
  config = predict.DecodingConfig(eos_id=gpt2_features.decoding_eos(vocabulary, 1))
  assert config.eos_id == vocabulary.eos_id  # not T5's 1, which is '"' here
  return np.asarray(predict.decode(
      model, {'params': params},
      tuple(jnp.asarray(batch[k]) for k in contract.DECODER_ONLY.predict_features),
      LENGTHS['targets'], config))


def test_greedy_decoding_equals_hugging_face_step_by_step_argmax(vocabulary, gpt2):
  hf, model, params = gpt2
  eos = vocabulary.eos_id
  ours = _decode(model, params, _batch(TASK, model), vocabulary)
  for row, (inputs, _) in enumerate(_sequences(vocabulary)):
    tokens, want = [eos] + inputs, []  # GPT-2's BOS, the inputs without EOS
    for _ in range(LENGTHS['targets']):  # transformers, one full pass per token
      with torch.no_grad():
        nxt = int(hf(input_ids=torch.tensor([tokens])).logits[0, -1].argmax())
      want.append(nxt)
      tokens.append(nxt)
      if nxt == eos:
        break
    assert ours[row, :len(want)].tolist() == want, row
    assert not ours[row, len(want):].any()  # 0 after EOS, as T5X (dropped by decode)


def test_trained_on_the_task_greedy_decoding_reproduces_targets_ending_in_bangs(vocabulary,
                                                                              gpt2):
  """A few hundred steps on the four examples; decoding must give 'hi!' and '!!!' back.

  With seqio's zero conventions the '!' would carry no loss (so never be
  learnt) and the sequences would start from '!' instead of GPT-2's BOS.
  """
  _, model, params = gpt2
  batch = {k: jnp.asarray(v) for k, v in _batch(TASK, model).items()}
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: batch_loss(model, {'params': p}, batch, z_loss=0.0)[0])(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(150):
    params, state = step(params, state)
  ours = _decode(model, params, batch, vocabulary)
  for row, (_, targets) in enumerate(_sequences(vocabulary)):
    assert ours[row, :len(targets)].tolist() == targets, row  # EOS included: it stops
  assert [vocabulary.decode(row.tolist()) for row in ours] == [t for _, t in EXAMPLES]


def test_rank_classification_labels_are_encoded_as_the_targets(vocabulary):
  labels = [' yes', 'hi!', '!!!']
  evaluator = InferenceEvaluator(TASK, LENGTHS, batch_size=4, rank_classification_labels=labels)
  tokens = evaluator._label_tokens()  # pylint: disable=protected-access
  assert tokens == [vocabulary.encode(t) + [vocabulary.eos_id] for t in labels]
  assert vocabulary.encode(' yes') != vocabulary.encode('yes')  # the leading space counts


# -- errors and the T5 path -----------------------------------------------------
def test_a_model_that_cannot_read_the_vocabulary_is_one_line(vocabulary, gpt2):
  _, model, _ = gpt2
  small = GPT2LM(model.config.replace(vocab_size=100))
  with pytest.raises(ValueError) as error:
    contract.feature_converter_for(small, TASK)
  message = str(error.value)
  assert '\n' not in message and f'({vocabulary.vocab_size} ids)' in message
  assert 'vocab_size 100' in message and 'gin/models/gpt2/' in message
  t5 = Transformer(T5Config(vocab_size=400, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                            num_encoder_layers=1, num_decoder_layers=1))
  lm = DecoderOnlyLM(DecoderOnlyConfig(vocab_size=400, emb_dim=16, num_heads=2, num_layers=1,
                                       head_dim=8, mlp_dim=32))
  for other in (t5, lm):
    with pytest.raises(ValueError) as error:
      contract.feature_converter_for(other, TASK)
    message = str(error.value)
    assert '\n' not in message and type(other).__name__ in message
    assert 'gin/models/gpt2/' in message and 'id 0 is a token' in message
  # A model with more ids than the vocabulary (padded rows) is fine.
  assert isinstance(contract.feature_converter_for(
      GPT2LM(model.config.replace(vocab_size=512)), TASK),
                    gpt2_features.GPT2DecoderFeatureConverter)


def test_t5_vocabulary_tasks_keep_seqios_converters(gpt2):
  import fixture_tasks  # pylint: disable=g-import-not-at-top,unused-import
  _, model, _ = gpt2
  t5 = Transformer(T5Config(vocab_size=32128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                            num_encoder_layers=1, num_decoder_layers=1))
  assert type(contract.feature_converter_for(model, 'fixture_sentiment')) is (
      seqio.DecoderFeatureConverter)
  assert type(contract.feature_converter_for(t5, 'fixture_sentiment')) is (
      seqio.EncDecFeatureConverter)
  assert gpt2_features.decoding_eos(fixture_tasks.VOCABULARY, 7) == 7


def test_mixing_vocabularies_is_refused(vocabulary):
  import fixture_tasks  # pylint: disable=g-import-not-at-top,unused-import
  del vocabulary  # registers the GPT-2 tasks
  name = 'gpt2_and_t5_mixture'
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(TASK, 1.0), ('fixture_sentiment', 1.0)])
  with pytest.raises(ValueError, match='mixes a GPT-2 vocabulary'):
    contract.task_vocabulary(name)


# -- the CLIs -------------------------------------------------------------------
TASK_MODULE = '''"""Registers {name} on the GPT-2 vocabulary at {path!r} (written by the test)."""
import seqio, tensorflow as tf
from prompt_tuning.data import gpt2_tasks

EXAMPLES = {examples!r}


def _dataset_fn(split, shuffle_files, seed=None):
  return tf.data.Dataset.from_tensor_slices({{'inputs': [i for i, _ in EXAMPLES],
                                             'targets': [t for _, t in EXAMPLES]}})


def _exact(targets, predictions):
  return {{'exact': 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}}


gpt2_tasks.register_text_task('{name}', seqio.FunctionDataSource(
    _dataset_fn, splits=['train', 'validation']), [], {path!r}, metric_fns=[_exact])
'''


def _cli(module, args, pythonpath):
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=900, check=False,
                        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                            [str(pythonpath), os.environ.get('PYTHONPATH', '')])))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.mark.slow  # three CLI processes on 2 CPU cores
def test_train_infer_and_eval_clis_on_a_gpt2_vocabulary_task(tmp_path, vocab_folder):
  """A tiny GPT-2 (gin/models/gpt2/tiny.gin, more ids than the tiny BPE) trained from
  scratch on a GPT-2-vocabulary task until it reproduces its targets ('hi!', '!!!'),
  then predicted (infer) and evaluated (eval: the task's metric over the decoded text)."""
  (tmp_path / 'gpt2_cli_tasks.py').write_text(TASK_MODULE.format(
      name='gpt2_cli_bang', path=str(vocab_folder), examples=EXAMPLES))
  task = ["--gin.MIXTURE_OR_TASK_NAME='gpt2_cli_bang'",
          "--gin.MIXTURE_OR_TASK_MODULE='gpt2_cli_tasks'",
          f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}']
  model = '--gin_file=gin/models/gpt2/tiny.gin'
  _cli('prompt_tuning.train', [
      model, '--gin_file=gin/runs/model_tune.gin', '--gin.INITIAL_CHECKPOINT_PATH=None',
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'", '--gin.TRAIN_STEPS=150', '--gin.BATCH_SIZE=4',
      '--gin.EVAL_PERIOD=None', '--gin.CHECKPOINT_PERIOD=150', '--gin.LOG_PERIOD=20',
      "--gin.optimizers.Adafactor.learning_rate=0.01", *task], tmp_path)
  assert (tmp_path / 'run' / 'checkpoint_150').is_dir()
  _cli('prompt_tuning.infer', [
      model, '--gin_file=gin/runs/infer.gin', f"--gin.CHECKPOINT_PATH='{tmp_path / 'run'}'",
      f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'", '--gin.BATCH_SIZE=4', *task], tmp_path)
  lines = [json.loads(line) for line in
           (tmp_path / 'infer' / 'gpt2_cli_bang-validation-predict.jsonl').read_text()
           .splitlines()]
  assert [line['inputs'] for line in lines] == [i for i, _ in EXAMPLES]
  # Memorised, '!' included: it was in the loss, and decoding stops at EOS, not at id 1.
  assert [line['prediction'] for line in lines] == [t for _, t in EXAMPLES]
  _cli('prompt_tuning.eval', [
      model, '--gin_file=gin/runs/eval.gin', f"--gin.CHECKPOINT_PATH='{tmp_path / 'run'}'",
      f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'", '--gin.BATCH_SIZE=4', *task], tmp_path)
  metrics = (tmp_path / 'eval' / 'gpt2_cli_bang-metrics.jsonl').read_text().splitlines()
  assert json.loads(metrics[-1])['exact'] == 100.0
