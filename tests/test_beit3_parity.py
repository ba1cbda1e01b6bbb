"""BEiT-3's multiway transformer: vlfm's ``MomeTransformer`` (``multiway_attention``, ``sub_ln``) against
torchscale 0.3.0's ``BEiT3`` with random weights, converted by ``vlfm.convert.torchscale``, float32.

torchscale runs ``[image; text]``; vlfm runs ``[text; image]`` on the same embedded tokens (torchscale's own
patch, token and position embeddings), so the outputs are compared after reordering. Covered: the fused
pass with padded text, the image-only pass (every position through the vision expert) and the text-only
pass (the language expert)."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.convert.torchscale import beit3_encoder_to_mome
from vlfm.models.mome import MomeTransformer

pytestmark = pytest.mark.parity

WIDTH, HEADS, FFN, DEPTH, IMAGE, PATCH, TEXT = 32, 4, 37, 2, 32, 8, 7


def _beit3():
    torch = pytest.importorskip("torch")
    if "fairscale" not in sys.modules:
        try:
            import fairscale.nn  # noqa: F401
        except ImportError:  # imported by torchscale's encoder, used only for activation checkpointing / FSDP
            nn_stub = types.ModuleType("fairscale.nn")
            nn_stub.checkpoint_wrapper = nn_stub.wrap = lambda module, *a, **k: module
            sys.modules["fairscale"] = types.ModuleType("fairscale")
            sys.modules["fairscale.nn"] = nn_stub
    config = pytest.importorskip("torchscale.architecture.config")
    beit3 = pytest.importorskip("torchscale.model.BEiT3")
    torch.manual_seed(0)
    args = config.EncoderConfig(vocab_size=99, multiway=True, layernorm_embedding=False, no_output_layer=True,
                                encoder_embed_dim=WIDTH, encoder_attention_heads=HEADS, encoder_ffn_embed_dim=FFN,
                                encoder_layers=DEPTH, img_size=IMAGE, patch_size=PATCH, max_source_positions=16,
                                normalize_output=True)
    model = beit3.BEiT3(args).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): move every parameter so each one matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return torch, model


def _mome():
    return MomeTransformer(DEPTH, HEADS, FFN, multiway_attention=True, sub_ln=True, qkv_bias="qkv", ln_eps=1e-5,
                           layer_scale=None, scan=True)


def _embedded(torch, model, image, text, split):
    """torchscale's input to its encoder layers: embeddings plus the multiway position tables."""
    parts = [p for p in (None if image is None else model.vision_embed(image),
                         None if text is None else model.text_embed(text)) if p is not None]
    x = torch.cat(parts, dim=1)
    model.encoder.apply(lambda m: setattr(m, "split_position", split) if hasattr(m, "split_position") else None)
    return model.encoder.forward_embedding(None, x)[0]


def test_multiway_transformer_matches_torchscale_beit3():
    torch, model = _beit3()
    rng = np.random.default_rng(0)
    image = torch.tensor(rng.normal(size=(2, 3, IMAGE, IMAGE)).astype(np.float32))
    text = torch.tensor(rng.integers(1, 99, size=(2, TEXT)))
    lengths = np.array([TEXT, 4])
    pad = torch.tensor(np.arange(TEXT)[None] >= lengths[:, None])
    params = {"params": beit3_encoder_to_mome(model.state_dict(), HEADS)}
    mome = _mome()
    fwd = jax.jit(mome.apply, static_argnames=("mode", "text_len"))
    n_image = (IMAGE // PATCH) ** 2 + 1
    with torch.no_grad():
        fused = model(textual_tokens=text, visual_tokens=image, text_padding_position=pad)["encoder_out"].numpy()
        x = _embedded(torch, model, image, text, n_image).numpy()
        image_only = model(visual_tokens=image)["encoder_out"].numpy()
        x_image = _embedded(torch, model, image, None, -1).numpy()
        text_only = model(textual_tokens=text)["encoder_out"].numpy()
        x_text = _embedded(torch, model, None, text, 0).numpy()

    # fused: vlfm's [text; image] order, the padded text keys masked
    key_mask = np.concatenate([~pad.numpy(), np.ones((2, n_image), bool)], axis=1)
    ours = fwd(params, jnp.asarray(np.concatenate([x[:, n_image:], x[:, :n_image]], axis=1)), mode="vl",
               text_len=TEXT, key_mask=jnp.asarray(key_mask))
    ours = np.concatenate([ours[:, TEXT:], ours[:, :TEXT]], axis=1)
    real = np.concatenate([np.ones((2, n_image), bool), ~pad.numpy()], axis=1)
    np.testing.assert_allclose(ours[real], fused[real], rtol=1e-4, atol=1e-5)

    np.testing.assert_allclose(fwd(params, jnp.asarray(x_image), mode="image"), image_only, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fwd(params, jnp.asarray(x_text), mode="text"), text_only, rtol=1e-4, atol=1e-5)


def test_converter_refuses_a_relative_position_table():
    with pytest.raises(ValueError, match="relative_position"):
        beit3_encoder_to_mome({"encoder.relative_position.relative_attention_bias.weight": np.zeros((4, 2)),
                               "encoder.layers.0.self_attn.q_proj.A.weight": np.zeros((8, 8))}, 2)
