"""Training: the Mobile V-MoE recipe (dense twin -> superclasses -> MoE), loop, losses, EMA, DDP.

``resolve`` builds the TrainConfig and data of a run, ``train`` runs it, ``resume`` continues one
(``mvmoe train`` calls these); ``fit`` trains one stage; ``recipes`` holds the named ImageNet-1k recipes.
"""

from .loop import TrainState, fit, train_one_epoch
from .run import DEFAULT_DATA, DEFAULT_MODEL, DEFAULT_SETTINGS, adapt_to_data, resolve, resume, train

__all__ = ["resolve", "train", "resume", "fit", "TrainState", "train_one_epoch", "adapt_to_data",
           "DEFAULT_MODEL", "DEFAULT_DATA", "DEFAULT_SETTINGS"]
