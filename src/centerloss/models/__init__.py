"""Embedding networks. Each ends at its feature layer and exposes ``embed_dim``; the classifier lives in the
objective (:class:`centerloss.losses.JointLoss`).

``create_model(name, **kw)`` builds a registered network; ``MODELS.names()`` lists them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str):
    """Decorator: ``@register_model("lenetpp")`` on a class or factory returning an ``nn.Module``."""
    return MODELS.register(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return MODELS.create(name, **kwargs)


# Importing the modules registers their networks.
from . import face_resnet, lenet, paper_net  # noqa: E402,F401

__all__ = ["MODELS", "create_model", "register_model"]
