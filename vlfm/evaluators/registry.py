"""Evaluator registry.

Contract (as in big_vision): ``Evaluator(predict_fns, **cfg)`` is built once by the trainer (or by
``python -m vlfm.evaluate``) and ``evaluator.run(params)`` yields ``(metric_name, value)`` pairs.
``predict_fns`` maps names such as ``encode_image`` / ``encode_text`` to functions
``fn(params, batch) -> pytree`` of per-row outputs for a host's batch rows (any dtype) that the model
provides; evaluators never see the model, the loss or the train state. Evaluators read each host's share
of their split (``vlfm.data.pipeline.eval_examples``) and run the functions through
``vlfm.evaluators.predict``, which keeps every host in step and gathers the results; all hosts call
``run`` together.
"""

from __future__ import annotations

from vlfm.registry import Registry

EVALUATORS: Registry[type] = Registry("evaluator")
