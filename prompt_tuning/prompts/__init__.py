"""What prompt tuning trains: the soft prompt, its initializers, its placement.

    from prompt_tuning import prompts
    model = prompts.PromptTransformer(config, prompt_length=100,
                                      prompt_init=prompts.sampled_vocab())

The prompt lives in the 'prompt' variable collection, [length, embed] with
logical axes ('prompt', 'prompt_embed'); see `prompt.py`.
"""
from prompt_tuning.prompts.combine import (CombineFn, after_first_token, combined_mask,
                                           prefix, suffix)
from prompt_tuning.prompts.initializers import (Initializer, class_labels,
                                                default_vocabulary_path, from_file,
                                                original_code_uniform, random_uniform,
                                                sampled_vocab, text)
from prompt_tuning.prompts.prompt import COLLECTION, PROMPT_AXES, Prompt, PromptTransformer

__all__ = [
    'COLLECTION', 'CombineFn', 'Initializer', 'PROMPT_AXES', 'Prompt', 'PromptTransformer',
    'after_first_token', 'class_labels', 'combined_mask', 'default_vocabulary_path',
    'from_file', 'original_code_uniform', 'prefix', 'random_uniform', 'sampled_vocab',
    'suffix', 'text',
]
