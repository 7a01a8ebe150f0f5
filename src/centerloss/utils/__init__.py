"""Cross-cutting helpers, one module per concern; importing this package imports nothing heavy.

* :mod:`.atomic`   every file or folder the package writes (temp + fsync + rename; output-folder checks)
* :mod:`.images`   the one image decoder (PIL), used by training, evaluation, alignment and the face tools
* :mod:`.device`   turning ``"auto"``/``"cpu"``/``"cuda:1"`` into a ``torch.device``, with a clear error
* :mod:`.machine`  what a report says about the machine it ran on
"""
