"""The VLMo fine-tuning configs (VQA, NLVR2) load, and a ``configs/vlmo_tiny.py`` run's parameters
fill their whole backbone through ``init_from`` (only the task head starts fresh; NLVR2's third
modality-type row grows from the image row). Shapes only (``eval_shape``): nothing is trained."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.core.tree import merge_params
from vlfm.models import build_model
from vlfm.train.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1), "sampling": jax.random.key(2)}


def _shapes(model_cfg, batch):
    model = build_model(model_cfg)
    boxed = jax.eval_shape(lambda: model.init(RNGS, batch, train=True))["params"]
    flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(boxed), sep="/")
    return {k: np.zeros(v.shape, v.dtype) for k, v in flat.items()}


@pytest.mark.parametrize("name,heads", [("vlmo_tiny_vqa", {"vqa_head"}), ("vlmo_tiny_nlvr2", {"pair_head"})])
def test_finetune_config_takes_the_pretrained_backbone(name, heads):
    pre = load_config(os.path.join(REPO, "configs", "vlmo_tiny.py"))
    cfg = load_config(os.path.join(REPO, "configs", f"{name}.py"))
    assert cfg.model.name == "vlmo" and not cfg.model.mlm and cfg.model.itm == "none"
    image = jnp.zeros((2, 32, 32, 3))
    text = jnp.zeros((2, cfg.data.max_len), jnp.int32)
    source = _shapes(pre.model.to_dict(), {"image": image, "text": jnp.zeros((2, 24), jnp.int32)})
    batch = {"image": image, "text": text, "text_mask": jnp.ones(text.shape, bool)}
    if cfg.model.get("pair_classes"):
        batch["image2"] = image
    target = _shapes(cfg.model.to_dict(), batch)
    source = {k: v + 1 for k, v in source.items()}  # tell loaded from fresh
    merged, report = merge_params(flax.traverse_util.unflatten_dict(target, sep="/"),
                                  flax.traverse_util.unflatten_dict(source, sep="/"),
                                  grow_rows=tuple(cfg.init_from.get("grow_rows", ())))
    assert {k.split("/")[0] for k in report["fresh"]} == heads
    assert {k.split("/")[0] for k in report["unused"]} >= {"mlm_head", "itm_head", "itc_image_proj"}
    merged = flax.traverse_util.flatten_dict(merged, sep="/")
    assert np.all(merged["transformer/rel_pos/table"] == 1)
    if "vlmo_tiny_nlvr2" == name:
        assert merged["modality_embed/embedding"].shape[0] == 3 and np.all(merged["modality_embed/embedding"] == 1)
