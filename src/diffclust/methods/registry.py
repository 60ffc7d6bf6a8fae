"""Method names → estimator classes (used by the CLI and ``load_pretrained``)."""

from __future__ import annotations

import importlib

_METHODS = {
    "cludi": ("diffclust.methods.cludi", "CLUDI"),
    "kmeans": ("diffclust.methods.baselines", "KMeansClusterer"),
    "gmm": ("diffclust.methods.baselines", "GMMClusterer"),
    "self-classifier": ("diffclust.methods.self_classifier", "SelfClassifier"),
    "temi": ("diffclust.methods.temi", "TEMI"),
    "diec": ("diffclust.methods.diec", "DiEC"),
    "gcc": ("diffclust.methods.gcc", "GCC"),
    "clusterddpm": ("diffclust.methods.clusterddpm", "ClusterDDPM"),
}


def register_method(name: str, module: str, cls: str):
    _METHODS[name] = (module, cls)


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str):
    key = name.lower()
    if key not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {method_names()}")
    mod, cls = _METHODS[key]
    return getattr(importlib.import_module(mod), cls)


def get_method_class(class_name: str):
    for mod, cls in _METHODS.values():
        if cls == class_name:
            return getattr(importlib.import_module(mod), cls)
    raise ValueError(f"unknown estimator class {class_name!r} in config.json; known: "
                     f"{[c for _, c in _METHODS.values()]}")
