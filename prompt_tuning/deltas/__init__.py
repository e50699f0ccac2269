"""Methods as deltas: small plug-ins attached at the backbone's sites.

    from prompt_tuning.deltas import LoRA, PromptTuning, initializers
    model = Transformer(config, deltas=(PromptTuning(length=100,
                                                     init=initializers.sampled_vocab()),
                                        LoRA(rank=8)))

Methods: prompt (prompt tuning), p_tuning (P-tuning v1: an encoded prompt
placed by a template; p_tuning_in_text: at pseudo tokens the text holds),
multitask_prompt (shared + per-task prompts), prefix
(deep prompts: key/value prefixes on attention), intrinsic_msf / intrinsic_prompt
(intrinsic prompt tuning's two stages), lora, ia3, adapters (Houlsby /
Pfeiffer), bitfit (added biases) and norm tuning (the RMS norms' scales).

`base.Delta` is the spec every method implements; `paths` the regex
vocabulary over variable paths (train, save, restore, bank). Importing this
package registers every method, so a checkpoint's recorded deltas rebuild.
"""
from prompt_tuning.deltas import combine, initializers, paths
from prompt_tuning.deltas.base import (Delta, check_deltas, delta_from_config, export_all,
                                       logical_axis_rules, register, registered,
                                       trainable_patterns)
from prompt_tuning.deltas.adapters import Adapters
from prompt_tuning.deltas.bitfit import BitFit, NormTuning
from prompt_tuning.deltas.ia3 import IA3
from prompt_tuning.deltas.intrinsic import IntrinsicPrompt, IntrinsicSubspaceFinding
from prompt_tuning.deltas.lora import LoRA
from prompt_tuning.deltas.multitask import MultiTaskPrompt
from prompt_tuning.deltas.p_tuning import PTuning, PTuningInText
from prompt_tuning.deltas.prefix import PrefixTuning
from prompt_tuning.deltas.prompt import Prompt, PromptTuning
from prompt_tuning.deltas.records import read_prompt, recorded_deltas

__all__ = [
    'Adapters', 'BitFit', 'Delta', 'IA3', 'IntrinsicPrompt', 'IntrinsicSubspaceFinding', 'LoRA', 'MultiTaskPrompt', 'NormTuning', 'PTuning', 'PTuningInText', 'PrefixTuning', 'Prompt', 'PromptTuning', 'check_deltas', 'combine', 'delta_from_config',
    'export_all', 'initializers', 'logical_axis_rules', 'paths', 'read_prompt',
    'recorded_deltas', 'register', 'registered', 'trainable_patterns',
]
