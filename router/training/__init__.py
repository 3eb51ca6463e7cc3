"""Training and evaluation of the router: targets, fitting, metrics, distillation, model card.

Needs the `train` extra (scikit-learn, torch, sentence-transformers). The runtime in `router`
never imports this package; only the `train` and `eval` commands (router/cli.py) do, so the
serving process stays on numpy and tokenizers.
"""
