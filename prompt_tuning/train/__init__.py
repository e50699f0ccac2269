"""Training: state and step, optimizers, delta checkpoints, data, the loop.

`python -m prompt_tuning.train` is the command line (see __main__.py).
"""
