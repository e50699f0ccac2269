"""Exports a pretrained model (any format `load_pretrained` reads) as a Hugging Face T5 folder.

    python tools/export_hf.py demo_models/lm_adapted prompt_tuning/assets/demo_world_t5 \
        --dtype bfloat16
    # A LoRA / IA3 / norm-tuning checkpoint merged into its base: a plain T5
    # that serves the tuned model anywhere, with no delta overhead.
    python tools/export_hf.py /runs/rte_lora/best /out/rte_lora_t5 --merge_delta

The folder (config.json + model.safetensors) loads with `load_pretrained`
and with `transformers.T5ForConditionalGeneration.from_pretrained`.
"""
import argparse

from prompt_tuning.model import load_pretrained
from prompt_tuning.model.hf_checkpoint import write_hf_t5


def merged_params(checkpoint: str, initial_checkpoint_path: str = None):
  """(config, params) of a delta checkpoint merged into its base (`VariableLoader(merge=True)`)."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.infer.loading import VariableLoader
  from prompt_tuning.model import T5Config, Transformer
  from prompt_tuning.model.checkpoints import read_metadata
  config = T5Config(**read_metadata(checkpoint)['model_config'])
  loaded = VariableLoader(Transformer(config), initial_checkpoint_path,
                          merge=True).checkpoint(checkpoint)
  if loaded.model.deltas:
    kinds = [d.kind for d in loaded.model.deltas]
    raise SystemExit(f'{checkpoint}: {kinds} cannot be merged into the backbone; export a '
                     'prompt with tools/peft_adapter.py or serve it with this project.')
  return config, loaded.variables['params']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('source', help='a checkpoint, MODEL_DIR or Hugging Face folder')
  parser.add_argument('destination', help='the folder to write')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--merge_delta', action='store_true',
                      help='SOURCE is a delta checkpoint: merge it into its recorded base')
  parser.add_argument('--initial_checkpoint_path', default=None,
                      help='with --merge_delta: the base, if it moved')
  args = parser.parse_args()
  if args.merge_delta:
    config, params = merged_params(args.source, args.initial_checkpoint_path)
  else:
    config, params = load_pretrained(args.source)
  write_hf_t5(config, params, args.destination, dtype=args.dtype)
  print(f'Wrote {args.destination} ({args.dtype}) from {args.source}')


if __name__ == '__main__':
  main()
