"""Exports a pretrained model (any format `load_pretrained` reads) as a Hugging Face T5 folder.

    python tools/export_hf.py demo_models/lm_adapted prompt_tuning/assets/demo_world_t5 \
        --dtype bfloat16

The folder (config.json + model.safetensors) loads with `load_pretrained`
and with `transformers.T5ForConditionalGeneration.from_pretrained`.
"""
import argparse

from prompt_tuning.model import load_pretrained
from prompt_tuning.model.hf_checkpoint import write_hf_t5


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('source', help='a checkpoint, MODEL_DIR or Hugging Face folder')
  parser.add_argument('destination', help='the folder to write')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  args = parser.parse_args()
  config, params = load_pretrained(args.source)
  write_hf_t5(config, params, args.destination, dtype=args.dtype)
  print(f'Wrote {args.destination} ({args.dtype}) from {args.source}')


if __name__ == '__main__':
  main()
