"""Evaluator registry.

Contract (as in big_vision): ``Evaluator(predict_fns, **cfg)`` is built once by the trainer and
``evaluator.run(params)`` yields ``(metric_name, value)`` pairs. ``predict_fns`` maps names such as
``encode_image`` / ``encode_text`` to jitted functions ``fn(params, batch) -> array`` that the model
provides; evaluators never see the model, the loss or the train state.
"""

from __future__ import annotations

from vlfm.registry import Registry

EVALUATORS: Registry[type] = Registry("evaluator")
