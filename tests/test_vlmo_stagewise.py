"""VLMo's stagewise pretraining (``configs/vlmo_tiny_stagewise.py`` at tiny shapes): the image-only MIM
and text-only MLM passes, and every stage leaves the parameters it freezes bit-identical while the
ones it trains move (AdamW with weight decay, the config's own freeze patterns)."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlfm.data.pipeline import train_iterator
from vlfm.models import build_model
from vlfm.optim.combine import build_combiner
from vlfm.optim.optimizers import build_optimizer, path_mask
from vlfm.train.config import load_config
from vlfm.train.state import TaskInit, init_batch, state_initializer
from vlfm.train.step import make_train_step
from vlfm.train.tasks import build_tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def _tiny_config():
    c = load_config(os.path.join(REPO, "configs", "vlmo_tiny_stagewise.py"))
    c.model.update(dict(width=16, depth=2, num_heads=2, mlp_dim=32, vl_depth=1, image_size=16, max_text_len=24,
                        contrastive_dim=8, mim_vocab_size=8, tokenizer_fit_images=64))
    for task in c.tasks.values():
        task.steps = STEPS
        task.data.update(dict(num_examples=64, batch_size=4))
        if "image_size" in task.data:
            task.data.image_size = 16
    c.tasks.image.data.mim = dict(grid=(2, 2), num_masked=2, min_block=1)
    c.total_steps = 3 * STEPS
    return c


def _flat(tree):
    return flax.traverse_util.flatten_dict(flax.linen.meta.unbox(tree), sep="/")


@pytest.mark.slow  # three train steps compiled (the image-text one with ITC x2, hard ITM and MLM)
def test_each_stage_keeps_its_frozen_parameters_bit_identical():
    c = _tiny_config()
    model = build_model(c.model)
    tasks = build_tasks(c)
    assert [t.name for t in tasks] == ["image", "text", "vl"]
    base_tx, schedule = build_optimizer(c.optimizer, c.total_steps)
    assert c.optimizer.weight_decay > 0  # frozen must also mean "no weight decay"
    tx = optax.chain(build_combiner(c.get("gradient_combiner"), {t.name: t.weight for t in tasks}), base_tx)
    init = state_initializer(model, tx, tasks=[TaskInit(t.name, init_batch(t.example(), 2), t.forward)
                                               for t in tasks])
    state = jax.jit(init)(jax.random.key(0))
    state = flax.linen.meta.unbox(state)
    names = set(_flat(state["params"]))
    trained_by = {"image": "transformer/layers/ffn_image/mlp/fc1/kernel",
                  "text": "transformer/layers/ffn_text/mlp/fc1/kernel",
                  "vl": "transformer/vl_layers/ffn_vl/mlp/fc1/kernel"}
    for task in tasks:
        frozen = {k for k, v in _flat(path_mask(state["params"], task.freeze, True)).items() if v}
        # the public code's text-stage trainable set, and the shared attention / V-FFN frozen
        if task.name == "text":
            assert names - frozen == {n for n in names if n.startswith((
                "text_embeddings/", "modality_embed/", "mlm_head/", "transformer/rel_pos/", "transformer/ln_final/",
                "transformer/layers/ffn_text/", "transformer/vl_layers/ffn_text/"))}
            assert "transformer/layers/qkv/query/kernel" in frozen and "transformer/layers/ls1" in frozen
        if task.name == "image":
            assert {"text_embeddings/token_embed/embedding", "transformer/vl_layers/ffn_vl/mlp/fc1/kernel",
                    "mlm_head/mlm_bias", "itm_head/kernel"} <= frozen
        assert frozen and trained_by[task.name] not in frozen
        if task.name == "vl":  # freezes only the image stage's MIM parts; compiling its step costs most of the test
            assert all(n.startswith(("mim_", "mask_token")) or "mim" in n for n in frozen), sorted(frozen)
            continue
        step = jax.jit(make_train_step(model, [task], tx, schedule, seed=0, prefix_metrics=True))
        data = train_iterator(task.bundle, global_batch_size=task.batch_size, seed=0, process_index=0,
                              process_count=1)
        before = _flat(state["params"])
        for _ in range(STEPS):
            state, metrics = step(state, {task.name: next(data)}, {})
            assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
        after = _flat(state["params"])
        for name in frozen:
            np.testing.assert_array_equal(after[name], before[name], err_msg=f"stage {task.name} moved {name}")
        assert not np.array_equal(after[trained_by[task.name]], before[trained_by[task.name]])


def test_mim_and_text_mlm_passes():
    model = build_model(dict(name="vlmo", width=16, depth=2, num_heads=2, mlp_dim=32, vl_depth=1, vocab_size=30,
                             max_text_len=6, image_size=16, patch_size=8, contrastive_dim=8, mlm=True, itm="none",
                             mim_vocab_size=8, tokenizer_fit_images=64, image_abs_pos=True))
    r = np.random.default_rng(0)
    image = jnp.asarray(r.uniform(-1, 1, size=(2, 16, 16, 3)), jnp.float32)
    mask = jnp.asarray([[[True, False], [False, False]], [[False, True], [True, False]]])
    text = jnp.asarray(r.integers(1, 30, size=(2, 6)), jnp.int32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    params = model.init(rngs, {"image": image, "image_mask": mask}, method="mim")["params"]
    params.update(model.init(rngs, {"text": text}, method="text_mlm")["params"])

    @jax.jit
    def mim(p, image):
        return model.apply({"params": p}, {"image": image, "image_mask": mask}, method="mim")

    out = mim(params, image)
    assert out["mim_logits"].shape == (2, 4, 8)
    targets = np.asarray(out["mim_targets"])
    np.testing.assert_array_equal(targets < 0, ~np.asarray(mask).reshape(2, 4))
    assert ((targets[targets >= 0] >= 0) & (targets[targets >= 0] < 8)).all()
    # a masked patch's pixels reach the targets only, never the logits (the mask token takes the patch's
    # place before the absolute positions are added)
    changed = image.at[0, :8, :8].set(-image[0, :8, :8])
    np.testing.assert_allclose(mim(params, changed)["mim_logits"], out["mim_logits"], rtol=1e-6, atol=1e-6)
    visible = image.at[0, 8:, 8:].set(-image[0, 8:, 8:])
    assert not np.allclose(mim(params, visible)["mim_logits"], out["mim_logits"], atol=1e-4)

    # the text-only MLM pass needs no image and never touches the VL expert
    def loss(p):
        return model.apply({"params": p}, {"text": text}, method="text_mlm")["mlm_logits"].sum()

    grads = _flat(jax.jit(jax.grad(loss))(params))
    assert all(not np.any(v) for k, v in grads.items() if "/ffn_vl/" in k or "/ffn_image/" in k)
    assert np.any(grads["transformer/vl_layers/ffn_text/mlp/fc1/kernel"])
