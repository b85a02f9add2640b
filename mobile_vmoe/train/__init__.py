"""Training: the Mobile V-MoE recipe (dense twin -> superclasses -> MoE), loop, losses, EMA, DDP.

``train(model, data, out_dir, ...)`` is the entry point (``mvmoe train`` calls it); ``fit`` trains
one stage; ``recipes`` holds the named ImageNet-1k recipes.
"""

from .loop import fit
from .run import DEFAULT_DATA, DEFAULT_MODEL, DEFAULT_OVERRIDES, adapt_to_data, train

__all__ = ["train", "fit", "adapt_to_data", "DEFAULT_MODEL", "DEFAULT_DATA", "DEFAULT_OVERRIDES"]
