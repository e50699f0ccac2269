"""Gin text that builds a given test model, so a test states its shape once."""
import dataclasses

from prompt_tuning.model.config import T5Config


def model_gin(model_config: T5Config) -> str:
  """A model gin file for `model_config`: MODEL_CONFIG and DROPOUT_RATE, as in gin/models/.

  Only fields that differ from T5Config's defaults are bound; dropout goes
  through %DROPOUT_RATE so that the run files can turn it on.
  """
  defaults = T5Config()
  lines = ['from __gin__ import dynamic_registration',
           'from prompt_tuning.model import config',
           f'DROPOUT_RATE = {model_config.dropout_rate!r}',
           'MODEL_CONFIG = @config.T5Config()',
           'config.T5Config.dropout_rate = %DROPOUT_RATE']
  for field in dataclasses.fields(T5Config):
    value = getattr(model_config, field.name)
    if field.name != 'dropout_rate' and value != getattr(defaults, field.name):
      lines.append(f'config.T5Config.{field.name} = {value!r}')
  return '\n'.join(lines) + '\n'
