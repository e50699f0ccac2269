"""For each prompt position, the nearest vocabulary tokens by cosine similarity.

    python tools/nearest_neighbors.py --prompt MODEL_DIR|checkpoint_<step>|prompt.npy \
        --base INITIAL_CHECKPOINT_PATH [--top_k 5]

The paper's section 7: learned prompts' neighbours are often semantically
related to the task (class labels among them for class-label init).
"""
import argparse

from prompt_tuning.data.vocab import get_vocabulary
from prompt_tuning.model import load_pretrained
from prompt_tuning.infer.neighbors import describe, nearest_neighbors
from prompt_tuning.deltas import read_prompt


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--prompt', required=True, help='checkpoint, MODEL_DIR or .npy')
  parser.add_argument('--base', required=True, help='the frozen model the prompt belongs to')
  parser.add_argument('--vocabulary', default=None, help='SentencePiece model (T5\'s by default)')
  parser.add_argument('--top_k', type=int, default=5)
  args = parser.parse_args()

  prompt = read_prompt(args.prompt)
  _, params = load_pretrained(args.base)
  embedding = params['token_embedder']['embedding']
  if prompt.shape[-1] != embedding.shape[-1]:
    raise SystemExit(f'The prompt {prompt.shape} does not fit the model\'s embedding '
                     f'width {embedding.shape[-1]}.')
  vocabulary = get_vocabulary(args.vocabulary)
  ids, sims = nearest_neighbors(prompt, embedding, args.top_k, vocabulary.vocab_size)
  print('\n'.join(describe(ids, sims, lambda t: vocabulary.decode([t]) or f'<id {t}>')))


if __name__ == '__main__':
  main()
