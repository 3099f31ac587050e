"""Import f5-tts's model code without its training stack.

``f5_tts/model/__init__.py`` does ``from f5_tts.model.trainer import Trainer``, and the
trainer imports wandb, accelerate, datasets and ema_pytorch.  An appliance must not
carry those (nor gradio), so they are deliberately not installed, and a plain
``import f5_tts.model.cfm`` fails while Python runs the package ``__init__``.

:func:`ensure_f5_model_importable` registers, in ``sys.modules``, a package module
object for ``f5_tts.model`` whose ``__path__`` is the real directory.  Python then
imports the submodules (``cfm``, ``modules``, ``utils``, ``backbones.dit``...) from
the installed files as usual, but never executes the package ``__init__``.  The
object exposes what that ``__init__`` would (CFM, DiT, UNetT, MMDiT), so upstream's
``from f5_tts.model import CFM`` in ``f5_tts.infer.utils_infer`` works too;
``Trainer`` is resolved lazily and fails with a clear ImportError if asked for.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

_EXPORTS = {
    "CFM": "f5_tts.model.cfm",
    "DiT": "f5_tts.model.backbones.dit",
    "UNetT": "f5_tts.model.backbones.unett",
    "MMDiT": "f5_tts.model.backbones.mmdit",
}


def f5_tts_root() -> Path:
    """The installed ``f5_tts`` directory (a namespace package: it has no __init__)."""
    spec = importlib.util.find_spec("f5_tts")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("f5-tts is not installed (pip install --no-deps -r requirements/f5-tts.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def _lazy_getattr(name: str):
    if name == "Trainer":
        raise ImportError(
            "f5_tts.model.Trainer needs the training stack (wandb, accelerate, datasets), "
            "which ishowtts-edge does not install"
        )
    raise AttributeError(f"module 'f5_tts.model' has no attribute {name!r}")


def ensure_f5_model_importable() -> types.ModuleType:
    """Make ``f5_tts.model`` importable without running its ``__init__``; idempotent."""
    existing = sys.modules.get("f5_tts.model")
    if existing is not None and all(hasattr(existing, name) for name in _EXPORTS):
        return existing
    model_dir = f5_tts_root() / "model"
    if not (model_dir / "cfm.py").is_file():
        raise ImportError(f"{model_dir}: f5-tts's model code is missing (cfm.py not found)")
    if existing is None:
        package = types.ModuleType("f5_tts.model")
        spec = importlib.machinery.ModuleSpec("f5_tts.model", loader=None, is_package=True)
        spec.submodule_search_locations = [str(model_dir)]
        package.__spec__ = spec
        package.__path__ = [str(model_dir)]
        package.__package__ = "f5_tts.model"
        package.__file__ = None
        package.__doc__ = "f5_tts.model registered by ishowtts_edge.engine.upstream (trainer not imported)"
        package.__getattr__ = _lazy_getattr  # type: ignore[attr-defined]
        sys.modules["f5_tts.model"] = package
        parent = importlib.import_module("f5_tts")
        setattr(parent, "model", package)
    else:
        package = existing
    try:
        for name, module_name in _EXPORTS.items():
            setattr(package, name, getattr(importlib.import_module(module_name), name))
    except Exception:
        if existing is None:
            sys.modules.pop("f5_tts.model", None)
        raise
    package.__all__ = list(_EXPORTS)  # type: ignore[attr-defined]
    return package


def f5_configs_dir() -> Path:
    return f5_tts_root() / "configs"


def f5_default_vocab() -> Path:
    """The Emilia pinyin/char vocab that ships with f5-tts (what upstream load_model falls back to)."""
    return f5_tts_root() / "infer" / "examples" / "vocab.txt"
