"""Activation (gradient) checkpointing, switched on whatever the transformers version calls it."""

from __future__ import annotations

from torch import nn

from lorakit.errors import ConfigError


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant: works with a frozen base and trainable adapters."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ConfigError(f"model.gradient_checkpointing=true: {type(model).__name__} does not support it")
