"""centerloss: center loss (Wen et al., ECCV 2016) done right, with the paper's experiments.

>>> from centerloss import CenterLoss
"""

from .losses import (
    CenterLoss,
    ContrastiveLoss,
    JointLoss,
    TripletLoss,
    center_loss,
    contrastive_loss,
    triplet_loss,
)

__version__ = "0.1.0"
__all__ = [
    "CenterLoss",
    "ContrastiveLoss",
    "JointLoss",
    "TripletLoss",
    "center_loss",
    "contrastive_loss",
    "triplet_loss",
]
