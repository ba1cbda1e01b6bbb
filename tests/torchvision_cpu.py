"""Lets the PyPI torchvision build import next to a CPU-only torch build (the parity extra's setup).

torchvision's C++ library links CUDA libraries that a CPU torch build lacks; it then fails to load
quietly, but torchvision still registers fake kernels for ``torchvision::nms`` / ``qnms`` at import, and
without their schemas that import fails (and with it transformers, timm and open_clip, which import
torchvision). ``install()`` adds an import hook that defines the two schemas just before torchvision is
first imported, and only then imports torch. Nothing the parity tests use needs torchvision's C++ ops.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

_LIBRARIES: list = []  # keeps the schema definitions alive


class _DefineTorchvisionSchemas:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return None
        import torch

        try:
            torch.ops.load_library(os.path.join(list(spec.submodule_search_locations)[0], "_C.so"))
        except OSError:  # the CUDA build of torchvision next to CPU torch
            try:
                lib = torch.library.Library("torchvision", "DEF")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _LIBRARIES.append(lib)
            except RuntimeError:  # already defined (e.g. by a site-wide hook)
                pass
        return None  # the regular finders import torchvision


def install() -> None:
    """Adds the hook (once); a no-op for environments without torchvision or with a matching build."""
    if not any(isinstance(f, _DefineTorchvisionSchemas) for f in sys.meta_path):
        sys.meta_path.insert(0, _DefineTorchvisionSchemas())
