"""Fine-tuning starts: ``config.init_from`` loads matching parameters, keeps new ones fresh, grows
embedding rows, renames paths, and names every shape mismatch."""

import numpy as np
import pytest

from tests.helpers import SMALL_CLIP, run_trainer
from vlfm.core.checkpoint import load_params
from vlfm.train.init_from import init_params_from, merge_params


def _target():
    return {"encoder": {"w": np.zeros((2, 3), np.float32)}, "type_embed": {"embedding": np.zeros((3, 2), np.float32)},
            "vqa_head": {"kernel": np.full((3, 4), 7.0, np.float32)}}


def _source():
    return {"encoder": {"w": np.arange(6, dtype=np.float64).reshape(2, 3)},
            "type_embed": {"embedding": np.array([[1.0, 2.0], [3.0, 4.0]])},
            "mlm_head": {"kernel": np.ones((3, 5))}}


def test_matching_paths_load_new_ones_stay_fresh_and_rows_grow():
    params, report = merge_params(_target(), _source(), grow_rows=[r"type_embed/.*"])
    np.testing.assert_array_equal(params["encoder"]["w"], np.arange(6).reshape(2, 3))
    assert params["encoder"]["w"].dtype == np.float32  # the model's dtype, not the source's
    np.testing.assert_array_equal(params["type_embed"]["embedding"], [[1, 2], [3, 4], [3, 4]])  # last row repeated
    np.testing.assert_array_equal(params["vqa_head"]["kernel"], 7.0)  # not in the source: fresh
    assert report == {"loaded": ["encoder/w", "type_embed/embedding"], "fresh": ["vqa_head/kernel"],
                      "unused": ["mlm_head/kernel"]}


def test_shape_mismatch_names_the_parameter_unless_skipped():
    with pytest.raises(ValueError, match=r"type_embed/embedding: source \(2, 2\), model \(3, 2\)"):
        merge_params(_target(), _source())
    params, report = merge_params(_target(), _source(), skip=[r"type_embed/.*"])
    np.testing.assert_array_equal(params["type_embed"]["embedding"], 0.0)
    assert "type_embed/embedding" in report["fresh"]


def test_rename_maps_source_paths_and_no_match_is_an_error():
    source = {"image": {"encoder": {"w": np.ones((2, 3))}}}
    params, report = merge_params(_target(), source, rename=[(r"^image/encoder/", "encoder/")])
    np.testing.assert_array_equal(params["encoder"]["w"], 1.0) and report["loaded"] == ["encoder/w"]
    with pytest.raises(ValueError, match="no parameter path of the source matches"):
        merge_params(_target(), source)


def test_config_errors_are_named(tmp_path):
    with pytest.raises(KeyError, match="valid keys: params, checkpoint, hf, open_clip, skip, rename, grow_rows, resample, inflate, sources"):
        init_params_from({"parms": "x"}, _target())
    with pytest.raises(KeyError, match="exactly one of params, checkpoint, hf, open_clip"):
        init_params_from({"params": None, "skip": ()}, _target())
    with pytest.raises(FileNotFoundError, match="no directory"):
        init_params_from({"params": str(tmp_path / "missing")}, _target())


def test_two_sources_each_with_its_own_renames(tmp_path):
    """METER-style: the image tower from one run, the text tower from another, heads fresh."""
    from vlfm.core.checkpoint import export_params

    target = {"image": {"w": np.zeros((2, 2), np.float32)}, "text": {"w": np.zeros((3,), np.float32)},
              "head": {"w": np.zeros((1,), np.float32)}}
    export_params({"vision_model": {"w": np.full((2, 2), 1.0, np.float32)}, "logit_scale": np.ones((), np.float32)},
                  str(tmp_path / "clip"))
    export_params({"encoder": {"w": np.full((3,), 2.0, np.float32)}}, str(tmp_path / "bert"))
    cfg = {"params": None, "skip": (), "sources": (
        {"params": str(tmp_path / "clip"), "rename": [("^vision_model/", "image/")]},
        {"params": str(tmp_path / "bert"), "rename": [("^encoder/", "text/")]})}
    params = init_params_from(cfg, target)
    np.testing.assert_array_equal(params["image"]["w"], 1.0)
    np.testing.assert_array_equal(params["text"]["w"], 2.0)
    np.testing.assert_array_equal(params["head"]["w"], 0.0)
    # A parameter two sources both provide is an error naming it, not a silent overwrite.
    clash = dict(cfg, sources=(cfg["sources"][0], {"params": str(tmp_path / "clip"), "rename": [("^vision_model/", "image/")]}))
    with pytest.raises(ValueError, match=r"sources\[1\] loads parameters that sources\[0\] loaded already: image/w"):
        init_params_from(clash, target)
    # Each source must load something, and per-source options belong inside the source.
    with pytest.raises(ValueError, match="no parameter path of the source matches"):
        init_params_from(dict(cfg, sources=(cfg["sources"][0], {"params": str(tmp_path / "bert")})), target)
    with pytest.raises(KeyError, match=r"\['rename'\] belong inside one of them"):
        init_params_from(dict(cfg, rename=[("a", "b")]), target)
    with pytest.raises(KeyError, match=r"init_from.sources\[0\] has unknown keys \['renmae'\]"):
        init_params_from({"sources": ({"params": str(tmp_path / "clip"), "renmae": []},)}, target)


def test_start_from_sets_params_opt_state_and_ema(tmp_path):
    """The EMA starts at the loaded parameters (it stayed at the random init when the trainer looked for
    a state key "ema" instead of "ema_params"), in buffers of its own."""
    import flax.linen as nn
    import jax
    import optax

    from vlfm.core.checkpoint import export_params
    from vlfm.core.sharding import make_mesh, rules_from_config
    from vlfm.train.state import sharded_init, state_initializer
    from vlfm.train.trainer import start_from

    class Model(nn.Module):
        @nn.compact
        def __call__(self, batch, train=False):
            return {"y": nn.Dense(3)(batch["x"])}

    loaded = {"Dense_0": {"kernel": np.full((2, 3), 0.5, np.float32), "bias": np.ones(3, np.float32)}}
    export_params(loaded, str(tmp_path / "params"))
    tx = optax.adam(0.1)
    mesh, rules = make_mesh((1, 1, 1), devices=jax.devices()[:1]), rules_from_config()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(Model(), tx, {"x": np.ones((1, 2), np.float32)}, ema=True)
        state, shardings, _ = sharded_init(init, jax.random.key(0), mesh, rules)
        state = start_from({"params": str(tmp_path / "params")}, state, tx, shardings)
    for tree in (state["params"], state["ema_params"]):
        np.testing.assert_array_equal(tree["Dense_0"]["kernel"], 0.5)
        np.testing.assert_array_equal(tree["Dense_0"]["bias"], 1.0)
    assert state["ema_params"]["Dense_0"]["kernel"] is not state["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(state["opt_state"][0].mu["Dense_0"]["kernel"], 0.0)


@pytest.mark.slow
def test_trainer_starts_from_another_runs_params(tmp_path):
    """Run B starts from run A's export: with a zero learning rate its params are A's exactly, except
    the one it is told to keep fresh."""
    common = ["--config", "configs/clip_tiny.py", *SMALL_CLIP, "--config.evals.retrieval.every=0",
              "--config.evals.zeroshot.every=0", "--config.checkpoint_every=1000"]
    out = run_trainer([*common, "--workdir", str(tmp_path / "a"), "--config.total_steps=3"])
    assert out.returncode == 0, out.stderr[-3000:]
    out = run_trainer([*common, "--workdir", str(tmp_path / "b"), "--config.total_steps=1", "--config.seed=5",
                       "--config.optimizer.lr.peak=0.0", f"--config.init_from.params={tmp_path / 'a' / 'params'}",
                       "--config.init_from.skip=('logit_scale',)", "--config.ema_decay=0.5"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "init_from" in out.stdout and "fresh: logit_scale" in out.stdout, out.stdout[-3000:]
    a, b = load_params(str(tmp_path / "a" / "params")), load_params(str(tmp_path / "b" / "params"))
    flat_a = {k: v for k, v in _flat(a).items() if k != "logit_scale"}
    flat_b = _flat(b)
    assert flat_a and all(np.array_equal(v, flat_b[k]) for k, v in flat_a.items())
    assert not np.array_equal(_flat(a)["logit_scale"], flat_b["logit_scale"])  # kept fresh: A trained it
    # The EMA started at the loaded parameters too: after one step at lr 0 it still equals them.
    ema = _flat(_checkpoint_item(tmp_path / "b" / "checkpoints", 1, "ema_params"))
    assert all(np.allclose(v, ema[k], rtol=1e-6, atol=0) for k, v in flat_a.items())


def _checkpoint_item(directory, step, item):
    from etils import epath

    from vlfm.core.checkpoint import _load_pytree

    return _load_pytree(epath.Path(directory) / str(step) / item, None)


def _flat(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/")


def test_cli_missing_source_fails_with_its_own_error(tmp_path):
    """The run's FileNotFoundError is the last thing it prints (it was masked in about half of the runs
    by a background thread failing at interpreter shutdown)."""
    out = run_trainer(["--config", "configs/clip_tiny.py", *SMALL_CLIP, "--workdir", str(tmp_path / "w"),
                       f"--config.init_from.params={tmp_path / 'nonexistent'}"])
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: init_from.params: no directory"), out.stderr[-3000:]
    assert "cannot schedule new futures" not in out.stdout + out.stderr


def test_resample_posemb_keeps_the_class_row_and_interpolates_bilinearly():
    from vlfm.core.tree import resample_posemb

    # A 2x2 grid whose value is the column index, after one class row; to 4x4 with half-pixel centres the
    # columns sit at -0.25, 0.25, 0.75, 1.25 of the old grid: 0, 0.25, 0.75, 1 (edges clamp).
    table = np.array([[9.0], [0.0], [1.0], [0.0], [1.0]], np.float32)
    out = resample_posemb(table, 17)
    assert out.shape == (17, 1) and out[0, 0] == 9.0
    np.testing.assert_allclose(out[1:, 0].reshape(4, 4), np.tile([0.0, 0.25, 0.75, 1.0], (4, 1)), atol=1e-6)
    np.testing.assert_array_equal(resample_posemb(table, 5), table)
    with pytest.raises(ValueError, match="1 and 0 class rows"):
        resample_posemb(table, 16)
    params, report = merge_params({"pos": np.zeros((17, 1), np.float32)}, {"pos": table}, resample=["pos"])
    assert report["loaded"] == ["pos"] and params["pos"][0, 0] == 9.0
    with pytest.raises(ValueError, match=r"pos: source \(5, 1\), model \(17, 1\)"):
        merge_params({"pos": np.zeros((17, 1), np.float32)}, {"pos": table})


@pytest.mark.parity
def test_meter_starts_from_hf_clip_and_roberta(tmp_path):
    """METER's recipe: the image tower from a CLIP checkpoint at a smaller image size (positions
    resampled), the text tower from a RoBERTa checkpoint, the fusion layers fresh."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax
    from flax import traverse_util

    from vlfm.convert.hf import load_hf
    from vlfm.core.tree import strip_boxes
    from vlfm.models import build_model

    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                attn_implementation="eager")
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(tiny, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
        vision_config=dict(tiny, image_size=32, patch_size=8), projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    roberta = transformers.RobertaModel(transformers.RobertaConfig(vocab_size=99, max_position_embeddings=66,
                                                                   type_vocab_size=1, pad_token_id=1, **tiny))
    roberta.save_pretrained(tmp_path / "roberta")
    model = build_model(dict(
        name="meter", fusion="co_attention", bridge="none", input_norm=False, width=32, depth=1, num_heads=4,
        mlp_dim=37, mlm=True, itm="random",
        image=dict(name="vit", image_size=48, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=37, pre_norm=True,
                   patch_bias=False, ln_eps=1e-5, act="quick_gelu"),
        text=dict(name="bert", vocab_size=99, max_len=66, type_vocab_size=1, pos_offset=2, width=32, depth=2,
                  num_heads=4, mlp_dim=37, ln_eps=1e-5)))
    batch = dict(image=np.zeros((1, 48, 48, 3), np.float32), text=np.zeros((1, 8), np.int32),
                 text_mask=np.ones((1, 8), np.int32))
    # The model's parameter tree without running it (abstract init), filled with a marker value.
    shapes = strip_boxes(jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"])
    fresh = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)
    params = init_params_from({"sources": (
        {"hf": str(tmp_path / "clip"), "skip": [r"text_tower/.*"], "resample": [r"image_tower/pos_embed/.*"]},
        {"hf": str(tmp_path / "roberta")})}, fresh)
    flat, before = (traverse_util.flatten_dict(t, sep="/") for t in (params, fresh))
    clip_flat = traverse_util.flatten_dict(load_hf(str(tmp_path / "clip"))[1], sep="/")
    roberta_flat = traverse_util.flatten_dict(load_hf(str(tmp_path / "roberta"))[1], sep="/")
    for key, value in flat.items():
        if key == "image_tower/pos_embed/embedding":
            assert value.shape == (37, 32) and clip_flat[key].shape == (17, 32)
            np.testing.assert_array_equal(value[0], clip_flat[key][0])  # the class position, kept
        elif key.startswith("image_tower/"):
            np.testing.assert_array_equal(value, clip_flat[key], err_msg=key)
        elif key.startswith("text_tower/"):
            np.testing.assert_array_equal(value, roberta_flat[key], err_msg=key)
        else:  # fusion layers and heads: no source has them
            np.testing.assert_array_equal(value, before[key], err_msg=key)
