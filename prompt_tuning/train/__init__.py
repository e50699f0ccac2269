"""Training: the method, train state and step, optimizers, partitioning, data, the loop.

`python -m prompt_tuning.train` is the command line (see __main__.py).
"""
