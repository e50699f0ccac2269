"""Converts deltas to and from Hugging Face PEFT adapters (prompt tuning, LoRA, IA3; P-tuning out).

    python tools/peft_adapter.py export --checkpoint MODEL_DIR[/checkpoint_<step>] \
        --output rte_lora [--base_model_name_or_path hf_t5_folder]
    python tools/peft_adapter.py import --adapter rte_lora --output rte_lora.npz \
        [--base pretrained_model]

An exported folder loads with `peft.PeftModel.from_pretrained(t5, folder)` on
the Hugging Face export of the base (tools/export_hf.py). A P-tuning checkpoint
(prefix template) exports as PEFT's P_TUNING, holding the encoder's output (as
PEFT saves it); such a file cannot be imported back as P-tuning. An import writes an
.npz of the delta's variables by path ('lora/encoder/layers_0/attention/query/
lora_a', ...) and, under '__deltas__', the deltas' configuration as JSON:

    data = np.load('rte_lora.npz')
    deltas = [delta_from_config(c) for c in json.loads(str(data['__deltas__']))]
"""
import argparse
import json

import numpy as np

from prompt_tuning.interop.peft import export_peft_adapter, import_peft_adapter
from prompt_tuning.model.param_shapes import flatten_tree


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest='command', required=True)
  export = commands.add_parser('export', help='a delta checkpoint -> a PEFT adapter folder')
  export.add_argument('--checkpoint', required=True)
  export.add_argument('--output', required=True, help='the adapter folder to write')
  export.add_argument('--base_model_name_or_path', default=None,
                      help="recorded in adapter_config.json (default: the checkpoint's base)")
  imported = commands.add_parser('import', help='a PEFT adapter folder -> .npz variables')
  imported.add_argument('--adapter', required=True)
  imported.add_argument('--output', required=True, help='the .npz to write')
  imported.add_argument('--base', default=None,
                        help='a pretrained model whose shapes the adapter must fit')
  args = parser.parse_args()

  if args.command == 'export':
    export_peft_adapter(args.checkpoint, args.output, args.base_model_name_or_path)
    print(f'Wrote the PEFT adapter {args.output} from {args.checkpoint}')
    return
  config = None
  if args.base:
    from prompt_tuning.model import load_pretrained  # pylint: disable=g-import-not-at-top
    config, _ = load_pretrained(args.base)
  deltas, variables = import_peft_adapter(args.adapter, config)
  arrays = {path: np.asarray(value) for path, value in flatten_tree(variables).items()}
  arrays['__deltas__'] = np.asarray(json.dumps([d.to_config() for d in deltas]))
  with open(args.output, 'wb') as f:  # np.savez would append .npz to another suffix
    np.savez(f, **arrays)
  print(f'Wrote {[d.kind for d in deltas]} ({len(arrays) - 1} arrays) to {args.output}')


if __name__ == '__main__':
  main()
