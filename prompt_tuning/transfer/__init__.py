"""Transfer between tasks: SPoT's ranking of source prompts for a target (`spot`).

Initialising a run's delta from another run's checkpoint is
`prompt_tuning.deltas.assignment` (gin/runs/spot.gin).
"""
