"""Teacher-forced evaluation ("training_eval") counts every validation example.

seqio batches with drop_remainder, so a validation split smaller than a
batch used to give no batch at all and a reported loss of 0.0 (the demo
knowledge probe's 8 validation facts against batch 32). The evaluator
batches itself and pads the last batch with empty rows.
"""
import jax
import jax.numpy as jnp
import numpy as np

import fixture_tasks  # pylint: disable=unused-import  (registers fixture_sentiment: 32 validation rows)
from prompt_tuning.model import T5Config, Transformer
from prompt_tuning.train.evaluation import TeacherForcedEvaluator

CONFIG = T5Config(vocab_size=32128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
LENGTHS = {'inputs': 16, 'targets': 4}


def test_a_split_smaller_than_a_batch_is_evaluated_as_in_full_batches():
  model = Transformer(CONFIG)
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(0), tokens,
                                                            tokens, tokens))
  whole = TeacherForcedEvaluator(model, 'fixture_sentiment', LENGTHS, batch_size=16,
                                 steps=2).evaluate(variables)   # 2 full batches: 32 rows
  padded = TeacherForcedEvaluator(model, 'fixture_sentiment', LENGTHS, batch_size=48,
                                  steps=1).evaluate(variables)  # 32 rows + 16 empty ones
  uneven = TeacherForcedEvaluator(model, 'fixture_sentiment', LENGTHS, batch_size=24,
                                  steps=5).evaluate(variables)  # 24 + 8 rows
  assert whole['loss'] > 1.0  # a random model: about log(32128) per token
  for other in (padded, uneven):
    np.testing.assert_allclose(other['loss'], whole['loss'], rtol=1e-5)
    np.testing.assert_allclose(other['accuracy'], whole['accuracy'], rtol=1e-5)
