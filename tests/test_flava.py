"""FLAVA: parameter counts of the full config (no allocation), which states feed which parts, and the
targets of the masked objectives."""

import importlib.util
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.core.tree import strip_boxes
from vlfm.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(name="flava", width=16, num_heads=2, mlp_dim=32, image_depth=1, text_depth=1, mm_depth=1, image_size=16,
            patch_size=8, vocab_size=20, max_text_len=8, image_vocab_size=6, projection_dim=8, mim=True, mlm=True,
            mmm=True, itm=True, scan=False)  # unrolled single layers compile fastest
RNGS = {"masking": jax.random.key(1), "sampling": jax.random.key(2), "dropout": jax.random.key(3)}


def _config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _count_shapes(model_cfg, batches) -> dict:
    """Parameter shapes by path over every batch's branch (traced only, nothing allocated)."""
    model = build_model(model_cfg)

    def init():
        flat = {}
        for batch in batches:
            variables = model.init(dict(RNGS, params=jax.random.key(0)), batch, train=True)
            flat.update(flax.traverse_util.flatten_dict(strip_boxes(variables["params"]), sep="/"))
        return flat

    return {k: v.shape for k, v in jax.eval_shape(init).items()}


def _count(model_cfg, batches):
    return sum(int(np.prod(shape)) for shape in _count_shapes(model_cfg, batches).values())


def test_flava_full_matches_hf_parameter_counts():
    """HF FlavaModel(FlavaConfig()): 241,356,289; FlavaForPreTraining 357,645,303 of which the DALL-E
    codebook is 53,786,240 (a frozen tokenizer in vlfm, not a parameter)."""
    cfg = dict(_config("flava_full").model)
    n = (cfg["image_size"] // cfg["patch_size"]) ** 2
    image, text = jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 8), jnp.int32)
    codes = jnp.zeros((1, n), jnp.int32)
    pair = dict(image=image, text=text, mlm_text=text, mlm_targets=text, mim_targets=codes)
    base = dict(cfg, mim=False, mlm=False, mmm=False, itm=False)
    assert _count(base, [pair]) == 241_356_289
    assert _count(cfg, [pair, dict(image=image, mim_targets=codes), dict(text=text)]) == 357_645_303 - 53_786_240


@pytest.fixture(scope="module")
def tiny():
    model = build_model(TINY)
    image = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    text = jax.random.randint(jax.random.key(1), (4, 5), 4, 20)
    codes = jax.random.randint(jax.random.key(2), (4, 4), 0, 6)
    pair = dict(image=image, text=text, text_mask=jnp.ones((4, 5), bool), mlm_text=text.at[:, 1].set(3),
                mlm_targets=jnp.full((4, 5), -1).at[:, 1].set(text[:, 1]), mim_targets=codes,
                image_mask=jnp.zeros((4, 4), bool).at[:, 0].set(True), itm_image_index=jnp.array([0, 2, 1, 3]))

    def init():  # every task's branch, in one compiled program
        flat = {}
        for batch in (pair, dict(image=image, mim_targets=codes), dict(text=text)):
            variables = model.init(dict(RNGS, params=jax.random.key(0)), batch, train=True)
            flat.update(flax.traverse_util.flatten_dict(strip_boxes(variables["params"]), sep="/"))
        return flax.traverse_util.unflatten_dict(flat, sep="/")

    shapes = jax.eval_shape(init)  # traced only: random values below, no compiled init
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    run = jax.jit(lambda p, b: model.apply({"params": p}, b, train=True, rngs=RNGS))
    return model, params, pair, run


@pytest.mark.slow
def test_targets_of_the_masked_objectives(tiny):
    model, params, pair, run = tiny
    out = run(params, pair)
    np.testing.assert_array_equal(np.asarray(out["itm_labels"]), [1, 0, 0, 1])
    # MMM counts only on matching pairs (FLAVA's pos_mask); images follow the ITM draw.
    mmm_image = np.asarray(out["mmm_image_targets"])
    assert (mmm_image[[1, 2]] == -1).all()
    np.testing.assert_array_equal(mmm_image[[0, 3], 0], np.asarray(pair["mim_targets"])[[0, 3], 0])
    assert (mmm_image[:, 1:] == -1).all()  # unmasked patches never count
    assert (np.asarray(out["mmm_text_targets"])[[1, 2]] == -1).all()
    assert out["mmm_image_logits"].shape == (4, 4, 6) and out["mmm_text_logits"].shape == (4, 5, 20)
    images = run(params, dict(image=pair["image"], mim_targets=pair["mim_targets"]))  # random 40% masks drawn
    targets = np.asarray(images["mim_targets"])
    drawn = targets != -1
    assert drawn.sum(1).tolist() == [2, 2, 2, 2]  # 4 patches, int(4 * 0.6) = 2 kept
    np.testing.assert_array_equal(targets[drawn], np.asarray(pair["mim_targets"])[drawn])


@pytest.mark.slow
def test_multimodal_encoder_reads_states_before_the_final_layernorm(tiny):
    """Changing the unimodal encoders' final LayerNorm moves the contrastive embeddings, not the fused
    pass (ITM and MMM logits); the pair forward compiled above is reused."""
    model, params, pair, run = tiny
    before = run(params, pair)
    changed = flax.traverse_util.unflatten_dict({
        k: (v * 2.0 + 0.5 if k[0] in ("image_encoder", "text_encoder") and k[1] == "ln_final" else v)
        for k, v in flax.traverse_util.flatten_dict(params).items()})
    after = run(changed, pair)
    for key in ("itm_logits", "mmm_image_logits", "mmm_text_logits"):
        np.testing.assert_allclose(np.asarray(after[key]), np.asarray(before[key]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(after["image_embed"]), np.asarray(before["image_embed"]), atol=1e-3)
    assert not np.allclose(np.asarray(after["text_embed"]), np.asarray(before["text_embed"]), atol=1e-3)


def test_unimodal_tasks_need_their_heads():
    model = build_model(dict(TINY, mim=False, mlm=False))
    with pytest.raises(ValueError, match="mim=True"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, 16, 16, 3))}))
    with pytest.raises(ValueError, match="mlm=True"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), {"text": jnp.zeros((1, 4), jnp.int32)}))


def test_fine_tuning_heads_read_the_pretrained_backbone():
    """VQA, visual-entailment and NLVR2 heads add only their classifier: every other parameter has a
    pretrained twin of the same shape (what ``init_from`` loads); the logits have the task's shape."""
    image, text = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2, 5), jnp.int32)
    codes = jnp.zeros((2, 4), jnp.int32)
    pretrained = _count_shapes(TINY, [dict(image=image, text=text, mlm_text=text, mlm_targets=text,
                                           mim_targets=codes), dict(image=image, mim_targets=codes),
                                      dict(text=text)])
    base = dict(TINY, mim=False, mlm=False, mmm=False, itm=False)
    for extra, batch, key, classes, head in (
            (dict(vqa_answers=7), dict(image=image, text=text), "vqa_logits", 7, "vqa_head"),
            (dict(num_classes=3), dict(image=image, text=text), "logits", 3, "cls_head"),
            (dict(pair_classes=2), dict(image=image, image2=image, text=text), "logits", 2, "pair_head")):
        model = build_model(dict(base, **extra))
        out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), batch))
        shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(strip_boxes(variables["params"]),
                                                                          sep="/").items()}
        assert sorted({k.split("/")[0] for k in shapes if shapes[k] != pretrained.get(k)}) == [head]
        assert out[key].shape == (2, classes)
    model = build_model(dict(base, pair_classes=2))
    with pytest.raises(ValueError, match="image2"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), dict(image=image, text=text)))


@pytest.mark.slow
def test_itm_on_unmasked_inputs_ignores_the_image_mask(tiny):
    """``itm_masked=False``: ITM's multimodal pass reads the unmasked image, so changing the image mask
    moves the MMM logits and leaves the ITM logits as they are (the fixture's parameters)."""
    _, params, pair, _ = tiny
    model = build_model(dict(TINY, itm_masked=False))
    run = jax.jit(lambda b: model.apply({"params": params}, b, train=True, rngs=RNGS))
    one, other = run(pair), run(dict(pair, image_mask=jnp.zeros((4, 4), bool).at[:, 2:].set(True)))
    np.testing.assert_allclose(np.asarray(one["itm_logits"]), np.asarray(other["itm_logits"]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(one["mmm_image_logits"]), np.asarray(other["mmm_image_logits"]), atol=1e-4)
