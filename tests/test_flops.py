"""Model FLOPs counted from the traced step (``vlfm.core.flops``): the jaxpr walk itself, agreement with the
families' analytic formulas, scanned = unrolled, and a model without any formula training with an MFU."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlfm.core.flops import TRAIN_FACTOR, traced_flops
from vlfm.core.sharding import make_mesh
from vlfm.core.tree import strip_boxes
from vlfm.models import MODELS, build_model
from vlfm.models import layers
from vlfm.train.config import base_config, load_config
from vlfm.train.state import init_batch
from vlfm.train.tasks import build_tasks
from vlfm.train.teachers import Teacher
from vlfm.train.trainer import train

F32 = jnp.float32


def _s(*shape):
    return jax.ShapeDtypeStruct(shape, F32)


# --- the jaxpr walk ---------------------------------------------------------------------------------------


def test_dot_general_counts_output_times_contraction():
    assert traced_flops(jnp.matmul, _s(4, 8), _s(8, 16)) == 2 * 4 * 16 * 8
    # batch dims are output dims; two contracted dims multiply
    assert traced_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), _s(3, 4, 5), _s(3, 5, 6)) == 2 * 3 * 4 * 6 * 5
    assert traced_flops(lambda a, b: jnp.einsum("ijk,jkl->il", a, b), _s(2, 3, 4), _s(3, 4, 5)) == 2 * 2 * 5 * 12


def test_convolution_counts_the_kernel_window_and_groups():
    x, k = _s(2, 8, 8, 6), _s(3, 3, 3, 10)  # NHWC, HWIO with 2 groups of 3 input features
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),  # noqa: E731
                                                     feature_group_count=2)
    assert traced_flops(conv, x, k) == 2 * (2 * 8 * 8 * 10) * (3 * 3 * 3)


def test_control_flow_scan_cond_while_remat_custom_vjp_jit():
    a, w = _s(4, 8), _s(8, 8)
    one = 2 * 4 * 8 * 8
    scan = lambda a, w: jax.lax.scan(lambda c, _: (c @ w, None), a, None, length=5)[0]  # noqa: E731
    assert traced_flops(scan, a, w) == 5 * one
    cond = lambda a, w: jax.lax.cond(a.sum() > 0, lambda x: (x @ w) @ w, lambda x: x @ w, a)  # noqa: E731
    assert traced_flops(cond, a, w) == 2 * one  # the costlier branch
    loop = lambda a, w: jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ w, c[1] + 1), (a, 0))[0]  # noqa: E731
    assert traced_flops(loop, a, w) == one  # no static trip count: the body once
    assert traced_flops(lambda a, w: jax.checkpoint(lambda x: x @ w)(a), a, w) == one
    assert traced_flops(lambda a, w: jax.jit(lambda x: jax.nn.gelu(x @ w))(a), a, w) == one

    @jax.custom_vjp
    def f(x, w):
        return x @ w

    f.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))
    assert traced_flops(f, a, w) == one  # the primal only


def test_shard_map_bodies_count_once_per_shard():
    mesh = make_mesh((8, 1, 1))
    fn = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    assert traced_flops(fn, _s(16, 8), _s(8, 4)) == 2 * 16 * 8 * 4


def test_element_wise_work_is_not_counted():
    assert traced_flops(lambda x: jax.nn.softmax(jnp.tanh(x) * 3.0), _s(64, 64)) == 0


# --- traced = analytic ------------------------------------------------------------------------------------


def _tasks_and_params(name: str, towers: dict | None = None):
    config = load_config(f"configs/{name}.py", ["data.num_examples=32", "data.batch_size=8"])
    with config.unlocked():
        for tower in ("image", "text") if towers else ():
            config.model[tower].update(towers)
    task = build_tasks(config)[0]
    model = build_model(config.model)
    example = {k: np.asarray(v) for k, v in task.bundle.example().items()
               if isinstance(v, (np.ndarray, np.generic)) and np.asarray(v).dtype.kind in "biuf"}
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), init_batch(example, 1), train=False))["params"]
    return config, task, model, strip_boxes(params)


@pytest.mark.parametrize("name", ["clip_tiny", "vit_tiny", "bert_tiny"])
def test_traced_equals_analytic_for_towers_and_dual_encoder(name):
    """These formulas count every matmul of the model and loss (contrastive logits in both directions
    included), and the trace counts nothing else: equal up to float rounding."""
    config, task, model, params = _tasks_and_params(name)
    traced = task.step_flops(model, config.model, params, "traced")
    analytic = task.step_flops(model, config.model, params, "analytic")
    assert traced == pytest.approx(analytic, rel=1e-9)


@pytest.mark.parametrize("name", ["vilt_tiny", "meter_tiny", "bridgetower_tiny"])
def test_traced_equals_analytic_for_fusion_models_up_to_their_heads(name):
    """The fusion formulas (ViLT, METER/BridgeTower) leave out poolers and heads (MLM, ITM, contrastive):
    the trace counts them too, which here is under 1.5% (MLM decoders over a 96-word vocabulary)."""
    config, task, model, params = _tasks_and_params(name)
    traced = task.step_flops(model, config.model, params, "traced")
    analytic = task.step_flops(model, config.model, params, "analytic")
    assert analytic <= traced <= 1.015 * analytic


def test_scanned_and_unrolled_models_count_the_same():
    """A scanned stack is one scan over the layers: counted as depth x its body, as the unrolled twin;
    rematerialisation does not count."""
    counts = []
    for scan, remat in ((True, "full"), (False, "none")):
        config, task, model, params = _tasks_and_params("clip_tiny", dict(scan=scan, remat=remat))
        counts.append(task.step_flops(model, config.model, params, "traced"))
    assert counts[0] == counts[1] > 0


def test_unknown_flop_method_and_missing_formula_are_clear_errors():
    config, task, model, params = _tasks_and_params("clip_tiny")
    with pytest.raises(KeyError, match="valid: traced, analytic"):
        task.step_flops(model, config.model, params, "guess")
    with pytest.raises(KeyError, match="no analytic FLOP formula for model 'toy_mlp'.*traced"):
        task.step_flops(model, dict(name="toy_mlp"), params, "analytic")


# --- a model without any formula -------------------------------------------------------------------------


if "toy_mlp" not in MODELS:
    @MODELS.register("toy_mlp")
    class ToyMlp(nn.Module):
        """Flattened image -> hidden -> logits; no FLOP formula anywhere."""

        hidden: int = 16
        num_classes: int = 56

        @nn.compact
        def __call__(self, batch: dict, *, train: bool = False) -> dict:
            del train
            x = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32)
            h = nn.relu(layers.Proj((self.hidden,), ("embed", "mlp"), name="fc1")(x))
            return {"logits": layers.Proj((self.num_classes,), ("mlp", "classes"), name="fc2")(h)}


def _toy_config():
    c = base_config()
    c.model = dict(name="toy_mlp", hidden=16, num_classes=56)
    c.losses = dict(softmax_xent=dict(label_key="label"))
    c.data = dict(name="shapes", num_examples=64, image_size=8, batch_size=16, num_workers=0, train_split="train")
    c.total_steps, c.log_every, c.checkpoint_every = 4, 2, 4
    c.export_params, c.async_checkpoints = False, False
    return c


def test_a_model_without_a_formula_is_counted_from_its_trace():
    config = _toy_config()
    task = build_tasks(config)[0]
    model = build_model(config.model)
    batch = init_batch({"image": np.zeros((8, 8, 3), np.float32)}, 1)
    params = strip_boxes(jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"])
    forward = 2 * 16 * (8 * 8 * 3) * 16 + 2 * 16 * 16 * 56  # batch 16, two matmuls
    assert task.step_flops(model, config.model, params) == TRAIN_FACTOR * forward


def test_a_model_without_a_formula_trains_and_logs_mfu(tmp_path):
    train(_toy_config(), str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/mfu" in r]
    assert logged and all(r["train/mfu"] > 0 and r["train/tflops_per_device"] > 0 for r in logged)


def test_teachers_forward_passes_count_once():
    """A distilled task: student forward and loss x3 (trained), the frozen teacher's forward x1."""
    config = _toy_config()
    config.losses = dict(kd_logits=dict(teacher="big"))
    task = build_tasks(config)[0]
    task.teachers = ("big",)
    student, teacher = build_model(config.model), build_model(dict(config.model, hidden=32))
    batch = init_batch({"image": np.zeros((8, 8, 3), np.float32)}, 1)
    params, teacher_params = (strip_boxes(jax.eval_shape(lambda m=m: m.init(jax.random.key(0), batch))["params"])
                              for m in (student, teacher))
    flops = task.step_flops(student, config.model, params, "traced", {"big": Teacher("big", teacher, None)},
                            {"big": teacher_params})
    image = 8 * 8 * 3
    assert flops == TRAIN_FACTOR * 2 * 16 * (image * 16 + 16 * 56) + 2 * 16 * (image * 32 + 32 * 56)
