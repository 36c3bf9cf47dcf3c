"""modules_to_save: a module trained in full for an adapter (e.g. a classifier head), one copy per adapter."""

from __future__ import annotations

import copy

from torch import nn


class TrainableCopy(nn.Module):
    """Runs the copy of the first active adapter that has one; the original module otherwise.

    Attribute names follow PEFT (original_module, modules_to_save) so state-dict keys agree."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.disable_adapters = False

    def add_adapter(self, name: str) -> None:
        clone = copy.deepcopy(self.original_module)
        for param in clone.parameters():
            param.requires_grad_(True)
        self.modules_to_save[name] = clone

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def set_active(self, names: list[str]) -> None:
        self.active_adapters = [n for n in names if n in self.modules_to_save]

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def active_module(self) -> nn.Module:
        if self.disable_adapters or not self.active_adapters:
            return self.original_module
        return self.modules_to_save[self.active_adapters[0]]

    def forward(self, *args, **kwargs):
        return self.active_module()(*args, **kwargs)

    def __getattr__(self, name: str):
        # callers that read e.g. `.weight` or `.out_features` of the head see the module that runs
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.active_module(), name)
