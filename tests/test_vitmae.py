"""An MAE-pretrained ViT from HF (``ViTMAEForPreTraining``) imports as a vlfm ViT and starts VLC.

The imported tower is checked against HF ``ViTMAEModel`` run unmasked (``mask_ratio=0`` and a noise that
keeps the patch order), then the import initialises a tiny VLC through ``config.init_from`` with
``configs/vlc_base.py``'s rename, as that config's docstring tells a user to do.
"""

import json
import logging

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.test_convert import check, nhwc, run, save
from tests.test_flava import _config
from vlfm.convert.__main__ import main as convert_main
from vlfm.convert.hf import load_hf
from vlfm.core.checkpoint import load_params
from vlfm.core.tree import strip_boxes
from vlfm.models import build_model
from vlfm.train.config import load_config
from vlfm.train.init_from import has_source, init_params_from

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_MAE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
                patch_size=8, mask_ratio=0.0, layer_norm_eps=1e-6, decoder_hidden_size=16,
                decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=20)


@pytest.mark.parity
def test_vit_mae_imports_as_a_vit_and_starts_vlc(tmp_path, caplog):
    T = transformers
    torch.manual_seed(0)
    config = T.ViTMAEConfig(**TINY_MAE, attn_implementation="eager")
    pretraining = T.ViTMAEForPreTraining(config).eval()
    encoder = T.ViTMAEModel(config).eval()
    encoder.load_state_dict(pretraining.vit.state_dict())
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    n = (32 // 8) ** 2
    with torch.no_grad():
        ref = encoder(pixel_values=pixels, noise=torch.arange(n, dtype=torch.float32).expand(2, n))
    assert ref.mask.sum() == 0 and ref.ids_restore.tolist() == [list(range(n))] * 2  # every patch, in order

    # The command-line import of the pretraining checkpoint: encoder in, pixel decoder out (and said so).
    out_dir, mae_dir = tmp_path / "imported", save(pretraining, tmp_path / "mae")
    with caplog.at_level(logging.WARNING, logger="vlfm.convert.hf"):
        assert convert_main(["import", mae_dir, str(out_dir)]) == 0
    assert any("pixel decoder is not imported" in r.getMessage() for r in caplog.records), caplog.text
    cfg = json.loads((out_dir / "model_config.json").read_text())
    params = load_params(str(out_dir / "params"))
    assert cfg["name"] == "image_classifier" and cfg["image"]["name"] == "vit"
    assert cfg["image"]["pooler"] == "none" and cfg["image"]["ln_eps"] == 1e-6
    out = run(cfg, params, dict(image=nhwc(pixels)))
    check("vit_mae last_hidden_state", out["tokens"], ref.last_hidden_state)
    # ViTMAEModel's own directory (no "vit." prefix, no decoder) gives the same model.
    enc_cfg, enc_params = load_hf(save(encoder, tmp_path / "enc"))
    assert enc_cfg == cfg
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(enc_params), jax.tree.leaves(params)))

    # A tiny VLC of the same width, depth and patch grid, started through init_from as vlc_base documents.
    vlc_cfg = dict(_config("vlc_tiny").model, width=32, depth=2, num_heads=4, mlp_dim=37, ln_eps=1e-6)
    model = build_model(vlc_cfg)
    batch = dict(image=jnp.asarray(nhwc(pixels)), text=jnp.zeros((2, 4), jnp.int32))
    rngs = {k: jax.random.key(i) for i, k in enumerate(("params", "masking", "dropout", "sampling"))}
    shapes = jax.eval_shape(lambda: strip_boxes(model.init(rngs, batch, train=True)["params"]))
    fresh = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)  # a value no HF weight has
    # The trainer's own input: vlc_base's init_from (its rename) with the documented --config.init_from.params.
    init_from = load_config("configs/vlc_base.py", [f"init_from.params={out_dir / 'params'}"]).init_from
    assert has_source(init_from) and init_from.rename
    vlc = init_params_from(init_from, fresh)

    hf = load_file(f"{mae_dir}/model.safetensors")  # the Hub naming save_pretrained writes
    np.testing.assert_array_equal(vlc["image_embed"]["patch_embed"]["proj"]["kernel"],
                                  hf["vit.embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(vlc["image_embed"]["pos_embed"]["embedding"],
                                  hf["vit.embeddings.position_embeddings"][0])  # MAE's sin-cos table
    layer = jax.tree.map(lambda x: x[1], vlc["encoder"]["layers"])  # scanned stack: layer 1
    np.testing.assert_array_equal(layer["attn"]["query"]["kernel"],
                                  hf["vit.encoder.layer.1.attention.attention.query.weight"].T.reshape(32, 4, 8))
    np.testing.assert_array_equal(layer["mlp"]["fc2"]["kernel"], hf["vit.encoder.layer.1.output.dense.weight"].T)
    np.testing.assert_array_equal(layer["ln1"]["scale"], hf["vit.encoder.layer.1.layernorm_before.weight"])
    np.testing.assert_array_equal(vlc["ln_final"]["bias"], hf["vit.layernorm.bias"])
    flat = flax.traverse_util.flatten_dict(vlc, sep="/")
    for path in ("text_embed/token_embed/embedding", "pooler/kernel"):  # not in MAE: left fresh
        assert np.all(flat[path] == 0.5), path
    assert any(k.startswith("mae_decoder/") for k in flat)
    assert all(np.all(v == 0.5) for k, v in flat.items() if k.startswith("mae_decoder/"))  # VLC's own, fresh
    # The image alone through VLC's encoder is MAE's encoder.
    tokens = model.apply({"params": vlc}, batch, method=lambda m, b: m.ln_final(m.encoder(
        m.image_embed(b["image"]), train=False)))
    check("vlc-from-vit_mae image tokens", tokens, ref.last_hidden_state)
