"""centerloss: center loss (Wen et al., ECCV 2016) done right, with the paper's experiments and face tools.

>>> from centerloss import CenterLoss, JointLoss

Attributes load on first use (PEP 562), so ``import centerloss`` and ``centerloss --help`` stay fast and
import nothing heavy; ``from centerloss import CenterLoss`` imports torch, never OpenCV or matplotlib.
"""

from __future__ import annotations

from ._lazy import lazy_attributes

__version__ = "0.2.0"

_WHERE = {
    "CenterLoss": "losses", "ContrastiveLoss": "losses", "JointLoss": "losses", "TripletLoss": "losses",
    "ShardedJointLoss": "losses", "HEADS": "losses", "AUX": "losses",
    "center_loss": "losses", "contrastive_loss": "losses", "triplet_loss": "losses",
    "create_model": "models", "load_model": "models.io", "save_model": "models.io",
    "FaceRecognizer": "face", "Gallery": "face",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
