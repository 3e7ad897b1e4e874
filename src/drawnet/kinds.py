"""The model kinds a checkpoint can hold: a small registry, so that loading a checkpoint needs no
knowledge of the model classes.

Each kind names its config class, its model class and its training task as ``"module:attribute"``
strings, imported only when used (the registry imports nothing of drawnet itself, so every module
may use it without an import cycle). A new model family adds one :func:`register` call here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelKind:
    name: str  # the checkpoint's "kind"
    config: str  # "module:Class" of the config dataclass (from_dict / to_dict)
    model: str  # "module:Class" of the nn.Module, built as Class(config)
    task: str  # "module:Class" of the trainer's Task, built as Class(config)

    @staticmethod
    def _load(ref: str) -> Any:
        module, _, attribute = ref.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def config_class(self) -> type:
        return self._load(self.config)

    def model_class(self) -> type:
        return self._load(self.model)

    def task_class(self) -> type:
        return self._load(self.task)


_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> None:
    _KINDS[kind.name] = kind


def get(name: str) -> ModelKind:
    if name not in _KINDS:
        raise ValueError(f"unknown model kind {name!r}; this drawnet knows {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def names() -> list[str]:
    return sorted(_KINDS)


register(ModelKind("draw", "drawnet.config:DRAWConfig", "drawnet.model:DRAW", "drawnet.tasks:DRAWTask"))
register(ModelKind("classifier", "drawnet.config:ClassifierConfig", "drawnet.classifier:AttentionClassifier",
                   "drawnet.classifier:ClassifierTask"))
