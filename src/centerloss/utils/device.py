"""Device resolution, in one place: ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` -> ``torch.device``."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str | Any = "auto", local_rank: int = 0) -> Any:
    """``"auto"`` is ``cuda:<local_rank>`` when CUDA is available, else the CPU. Asking for CUDA where there is
    none, or for a GPU index that does not exist, is a :class:`ConfigError` that says what there is."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "", "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for, but CUDA is not available here (torch "
                              f"{torch.__version__}); use --device cpu or auto")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type not in ("cpu", "mps"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu or cuda[:N]")
    return dev
