"""Teachers restored from a params export, a training checkpoint and an HF checkpoint, sharded like the student."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.models import build_model
from vlfm.core.checkpoint import Checkpointer, export_params
from vlfm.core.sharding import make_mesh, rules_from_config
from vlfm.train.teachers import build_teachers, teacher_outputs

MODEL = dict(name="image_classifier", image=dict(name="vit", image_size=8, patch_size=4, width=16, depth=1,
                                                 num_heads=2, mlp_dim=32, num_classes=4))
BATCH = {"image": np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)}


def _trained_params():
    model = build_model(MODEL)
    params = nn.meta.unbox(model.init(jax.random.key(3), BATCH)["params"])
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-trivial head (the classifier starts at zero)
    return model, params


def test_teacher_from_export_and_checkpoint_sharded_and_exact(tmp_path):
    model, params = _trained_params()
    expected = model.apply({"params": params}, BATCH)["logits"]
    export_params(params, str(tmp_path / "params"))
    ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=1, async_save=False, handle_sigterm=False)
    ckpt.save(5, {"step": jnp.asarray(5), "params": params, "opt_state": {}})
    ckpt.close()
    mesh, rules = make_mesh((2, 2, 2)), rules_from_config()
    cfgs = {"a": {"model": MODEL, "params": str(tmp_path / "params")},
            "b": {"model": MODEL, "checkpoint": str(tmp_path / "ckpt")}}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        teachers = build_teachers(cfgs, BATCH, mesh, rules)
        params_in = {k: t.params for k, t in teachers.items()}
        q = params_in["a"]["image_tower"]["encoder"]["layers"]["attn"]["query"]["kernel"]
        assert q.sharding.spec[1] == "fsdp"  # laid out like the student's parameters
        out = jax.jit(lambda p, b: teacher_outputs(teachers, ("a", "b"), p, b))(params_in, BATCH)
    np.testing.assert_allclose(out["teacher/a"]["logits"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["teacher/b"]["logits"], expected, rtol=1e-5, atol=1e-6)


def test_teacher_config_errors_are_clear(tmp_path):
    mesh, rules = make_mesh((8, 1, 1)), rules_from_config()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        with pytest.raises(KeyError, match="valid keys"):
            build_teachers({"a": {"model": MODEL, "parmas": "x"}}, BATCH, mesh, rules)
        with pytest.raises(FileNotFoundError, match="train the teacher first"):
            build_teachers({"a": {"model": MODEL, "params": str(tmp_path / "missing")}}, BATCH, mesh, rules)
    with pytest.raises(KeyError, match="configured teachers"):
        teacher_outputs({}, ("vit",), {}, BATCH)


@pytest.mark.parity
def test_teacher_from_hf_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=16)
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg, add_pooling_layer=True).eval()
    hf.save_pretrained(tmp_path / "bert")
    ids = np.random.default_rng(0).integers(5, 99, (8, 7)).astype(np.int32)
    batch = {"text": ids, "text_mask": np.ones_like(ids)}
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
    mesh, rules = make_mesh((8, 1, 1)), rules_from_config()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        teachers = build_teachers({"bert": {"hf": str(tmp_path / "bert")}}, batch, mesh, rules)
        out = jax.jit(lambda p, b: teacher_outputs(teachers, ("bert",), p, b))({"bert": teachers["bert"].params}, batch)
    np.testing.assert_allclose(out["teacher/bert"]["tokens"], expected, rtol=1e-4, atol=1e-5)


def test_teacher_from_a_training_workdir_uses_its_resolved_config(tmp_path):
    """A run writes its resolved config (overrides included) to WORKDIR/config.json and into each checkpoint's
    metadata; ``workdir=DIR`` builds that model (here with a layer scale the config file does not set) and
    loads the run's params."""
    from vlfm.train.config import config_from_record, load_config, load_workdir_config
    from vlfm.train.trainer import train

    workdir = tmp_path / "teacher"
    config = load_config("configs/vit_tiny.py", [
        "total_steps=2", "log_every=1", "checkpoint_every=2", "async_checkpoints=false",
        "model.image.depth=1", "model.image.width=16", "model.image.mlp_dim=32", "model.image.num_heads=2",
        "model.image.layer_scale=0.5", "data.num_examples=64", "data.batch_size=8",
        "evals.accuracy.num_examples=16"])
    train(config, str(workdir))
    resolved = load_workdir_config(workdir)
    assert resolved.model.image.layer_scale == 0.5 and str(resolved) == str(config)
    meta_files = [p for p in (workdir / "checkpoints").rglob("*") if p.is_file() and "meta" in p.parts]
    metas = [json.loads(p.read_text()) for p in meta_files if p.read_text().startswith("{")]
    assert any(m.get("step") == 2 and "commit" in m and str(config_from_record(m)) == str(config) for m in metas)

    model = build_model(resolved.model.to_dict())
    batch = {"image": np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)}
    mesh, rules = make_mesh((8, 1, 1)), rules_from_config()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        teachers = build_teachers({"t": {"workdir": str(workdir)}}, batch, mesh, rules)
        params = teachers["t"].params
        assert "ls1" in str(jax.tree_util.tree_structure(params))  # the override's parameters exist
        out = jax.jit(lambda p, b: teacher_outputs(teachers, ("t",), p, b))({"t": params}, batch)
        with pytest.raises(KeyError, match="drop"):
            build_teachers({"t": {"workdir": str(workdir), "model": MODEL}}, batch, mesh, rules)
    expected = model.apply({"params": jax.device_get(params)}, batch)["logits"]
    np.testing.assert_allclose(out["teacher/t"]["logits"], expected, rtol=1e-5, atol=1e-6)
