"""Registering seqio tasks on GPT-2's byte-level BPE (`GPT2Vocabulary`).

    gpt2_tasks.register_text_task('my_task', source, [to_inputs_and_targets],
                                  vocabulary_path='/path/to/hf/gpt2')

The convention is GPT-2's, not T5's: a decoder-only sequence is
`<|endoftext|> inputs targets <|endoftext|>`, i.e. the inputs carry no EOS
(GPT-2 reads the prompt and continues it) and the targets end with EOS
(`<|endoftext|>`, where decoding stops). BOS is `<|endoftext|>` too; the
feature converter puts it first (`prompt_tuning/model/gpt2_features.py`). Token boundaries are the
texts' own: GPT-2's BPE glues a leading space to the next word, so write
the target as ' yes' if GPT-2 should see ' yes' after 'Answer:'.

Models and runs pick the right feature converter from the vocabulary
(`contract.feature_converter_for`): id 0 ('!') is a real token, trained on,
scored and decoded like any other.
"""
import functools
from typing import Callable, Dict, Optional, Sequence

import seqio

from prompt_tuning.data.gpt2_vocab import GPT2Vocabulary


@functools.lru_cache(maxsize=None)
def vocabulary(path: str) -> GPT2Vocabulary:
  """One GPT2Vocabulary per tokenizer folder (vocab.json + merges.txt)."""
  return GPT2Vocabulary(path)


def output_features(vocabulary_path: str) -> Dict[str, seqio.Feature]:
  """inputs (optional, no EOS) and targets (EOS appended) on GPT-2's vocabulary."""
  vocab = vocabulary(vocabulary_path)
  return {
      'inputs': seqio.Feature(vocab, add_eos=False, required=False),
      'targets': seqio.Feature(vocab, add_eos=True),
  }


def register_text_task(name: str, source: seqio.DataSource,
                       text_preprocessors: Sequence[Callable], vocabulary_path: str, *,
                       postprocess_fn: Optional[Callable] = None,
                       metric_fns: Sequence[Callable] = ()) -> seqio.Task:
  """Registers (or replaces) task `name` on the GPT-2 vocabulary at `vocabulary_path`.

  Args:
    source: the examples.
    text_preprocessors: map them to {'inputs': text, 'targets': text} (or
      targets only, a language-modelling task).
    vocabulary_path: a Hugging Face GPT-2 tokenizer folder.
    postprocess_fn, metric_fns: as seqio's.

  Returns:
    The task: text steps, tokenize, cache placeholder, EOS after trimming.
  """
  steps = [*text_preprocessors, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
           seqio.preprocessors.append_eos_after_trim]
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=steps,
      output_features=output_features(vocabulary_path), postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))


__all__ = ['output_features', 'register_text_task', 'vocabulary']
