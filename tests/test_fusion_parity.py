"""Parity of the fusion models with HF transformers: ViLT and BridgeTower (tiny random configs, eager
attention, eval mode, float32), imported through ``vlfm.convert.hf.load_hf`` (-> ``hf_fusion``).

HF ViLT draws its image patches with ``torch.multinomial`` on every forward pass, eval mode included;
the reference is run with ``torch.multinomial`` patched to return ``arange`` (raster order), which is
vlfm's order. Outputs must agree within 1e-4 relative (plus 1e-5 absolute) on real tokens.
"""

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.test_convert import check, nhwc, reload, save
from vlfm.convert.hf import load_hf, save_hf
from vlfm.models import build_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.parity

VILT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=16, image_size=32, patch_size=8, max_image_length=-1)
BT_TEXT = dict(vocab_size=99, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
               max_position_embeddings=20)
BT = dict(text_config=BT_TEXT, vision_config=dict(hidden_size=64, num_hidden_layers=3, image_size=32, patch_size=8),
          hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
EAGER = dict(attn_implementation="eager")


def raster_multinomial(weights, n, replacement=False, **kwargs):
    """torch.multinomial that returns the first n indices: HF ViLT's patches in raster order."""
    return torch.zeros(n, dtype=torch.long) if replacement else torch.arange(n)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 97, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    roberta_ids = ids.clone()
    roberta_ids[1, 4:] = 1  # RoBERTa pads with id 1 (its positions then stop counting)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    return dict(ids=ids, mask=mask, roberta_ids=roberta_ids, pixels=pixels,
                pixel_mask=torch.ones(2, 32, 32, dtype=torch.long))


def fused(cfg, params, batch, image_type=1):
    """vlfm's fused sequence for the batch's own pairs."""
    model = build_model(cfg)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return jax.jit(lambda p, b: model.apply({"params": p}, b, method=lambda m, b: m.fuse(
        m.encode_text(b["text"], b["text_mask"], False), m.encode_image(b["image"], False), image_type, False)))(
        params, batch)


def run(cfg, params, batch):
    """One compiled forward pass: a traced model compiles once, where op-by-op dispatch compiles every op."""
    return jax.jit(build_model(cfg).apply)({"params": params}, {k: jnp.asarray(v) for k, v in batch.items()})


def vilt_batch(inputs):
    return dict(image=nhwc(inputs["pixels"]), text=inputs["ids"].numpy(), text_mask=inputs["mask"].numpy())


def bt_batch(inputs):
    return dict(image=nhwc(inputs["pixels"]), text=inputs["roberta_ids"].numpy(), text_mask=inputs["mask"].numpy())


def hf_vilt(model, inputs, **extra):
    with torch.no_grad(), mock.patch("torch.multinomial", raster_multinomial):
        return model(input_ids=inputs["ids"], attention_mask=inputs["mask"], pixel_values=inputs["pixels"],
                     pixel_mask=inputs["pixel_mask"], **extra)


def hf_bt(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs["roberta_ids"], attention_mask=inputs["mask"], pixel_values=inputs["pixels"],
                     pixel_mask=inputs["pixel_mask"])


# ----------------------------------------------------------------------------------------------------
# ViLT


@pytest.mark.parametrize("scan", [True, False])
def test_vilt_model_parity(inputs, tmp_path, scan):
    torch.manual_seed(0)
    hf = transformers.ViltModel(transformers.ViltConfig(**VILT, **EAGER)).eval()
    cfg, params = load_hf(save(hf, tmp_path), scan=scan)
    assert cfg["name"] == "vilt" and cfg["scan"] == scan and ("layers" in params["encoder"]) == scan
    ref = hf_vilt(hf, inputs)
    out = fused(cfg, params, vilt_batch(inputs))
    real = np.concatenate([inputs["mask"].numpy(), np.ones((2, 17), int)], axis=1).astype(bool)
    check(f"vilt scan={scan} last_hidden_state", out["tokens"], ref.last_hidden_state, mask=real)
    check(f"vilt scan={scan} pooler_output", out["pooled"], ref.pooler_output)
    # The model's own outputs at evaluation are the same pass.
    np.testing.assert_allclose(run(cfg, params, vilt_batch(inputs))["pooled"], out["pooled"], rtol=1e-6, atol=1e-7)


def test_vilt_attention_parity(inputs, tmp_path):
    """The sown attention of chosen layers (scanned stack) against HF ``output_attentions=True``: the
    teacher side of DiDE's attention distillation. ``logits`` are the masked scores those come from."""
    torch.manual_seed(0)
    hf = transformers.ViltModel(transformers.ViltConfig(**VILT, **EAGER)).eval()
    cfg, params = load_hf(save(hf, tmp_path), scan=True)
    ref = hf_vilt(hf, inputs, output_attentions=True).attentions
    cfg = dict(cfg, attention_layers=(0, 1), attention_outputs=("probs", "logits"))
    batch = {k: jnp.asarray(v) for k, v in vilt_batch(inputs).items()}
    _, state = build_model(cfg).apply({"params": params}, batch, mutable=["attention"])
    (probs,), (logits,) = state["attention"]["encoder"]["probs"], state["attention"]["encoder"]["logits"]
    assert probs.shape == (2, 2, 4, 7 + 17, 7 + 17)
    for i in range(2):
        check(f"vilt attention layer {i}", probs[i], ref[i])
    np.testing.assert_allclose(jax.nn.softmax(logits, axis=-1), probs, rtol=1e-6, atol=1e-7)


def test_vilt_shuffles_patches_without_the_patch(inputs, tmp_path):
    """Why the reference is patched: unpatched HF ViLT permutes the image tokens on every call."""
    torch.manual_seed(0)
    hf = transformers.ViltModel(transformers.ViltConfig(**VILT, **EAGER)).eval()
    with torch.no_grad():
        a = hf(input_ids=inputs["ids"], pixel_values=inputs["pixels"], pixel_mask=inputs["pixel_mask"])
    patched = hf_vilt(hf, dict(inputs, mask=torch.ones_like(inputs["ids"])))
    image_a, image_b = a.last_hidden_state[:, 8:].numpy(), patched.last_hidden_state[:, 8:].numpy()
    assert not np.allclose(image_a, image_b, atol=1e-4)  # a different order ...
    np.testing.assert_allclose(np.sort(image_a, axis=1), np.sort(image_b, axis=1), atol=1e-4)  # ... of one set


def test_vilt_mlm_parity(inputs, tmp_path):
    torch.manual_seed(0)
    hf = transformers.ViltForMaskedLM(transformers.ViltConfig(**VILT, **EAGER)).eval()
    cfg, params = load_hf(save(hf, tmp_path))
    assert cfg["mlm"]
    ref = hf_vilt(hf, inputs).logits
    check("vilt_mlm logits", run(cfg, params, vilt_batch(inputs))["mlm_logits"], ref,
          mask=inputs["mask"].numpy().astype(bool))


def test_vilt_vqa_parity(inputs, tmp_path):
    torch.manual_seed(0)
    hf = transformers.ViltForQuestionAnswering(transformers.ViltConfig(**VILT, num_labels=5, **EAGER)).eval()
    cfg, params = load_hf(save(hf, tmp_path))
    assert cfg["vqa_answers"] == 5
    check("vilt_vqa logits", run(cfg, params, vilt_batch(inputs))["vqa_logits"], hf_vilt(hf, inputs).logits)


def test_vilt_nlvr2_parity(inputs, tmp_path):
    torch.manual_seed(0)
    config = transformers.ViltConfig(**VILT, num_images=2, modality_type_vocab_size=3, num_labels=2, **EAGER)
    hf = transformers.ViltForImagesAndTextClassification(config).eval()
    cfg, params = load_hf(save(hf, tmp_path))
    assert cfg["pair_classes"] == 2 and cfg["num_types"] == 3
    second = torch.flip(inputs["pixels"], dims=[0])
    with torch.no_grad(), mock.patch("torch.multinomial", raster_multinomial):
        ref = hf(input_ids=inputs["ids"], attention_mask=inputs["mask"],
                 pixel_values=torch.stack([inputs["pixels"], second], dim=1),
                 pixel_mask=torch.stack([inputs["pixel_mask"]] * 2, dim=1)).logits
    out = run(cfg, params, dict(vilt_batch(inputs), image2=nhwc(second)))
    check("vilt_nlvr2 logits", out["logits"], ref)


VILT_CLASSES = {"ViltModel": {}, "ViltForMaskedLM": {}, "ViltForQuestionAnswering": dict(num_labels=5),
                "ViltForImagesAndTextClassification": dict(num_images=2, modality_type_vocab_size=3, num_labels=2)}


def _vilt_call(hf, inputs):
    """HF ViLT's main output for the inputs (NLVR2: a flipped batch as the second image)."""
    if isinstance(hf, transformers.ViltForImagesAndTextClassification):
        second = torch.flip(inputs["pixels"], dims=[0])
        with torch.no_grad(), mock.patch("torch.multinomial", raster_multinomial):
            return hf(input_ids=inputs["ids"], attention_mask=inputs["mask"],
                      pixel_values=torch.stack([inputs["pixels"], second], dim=1),
                      pixel_mask=torch.stack([inputs["pixel_mask"]] * 2, dim=1)).logits
    out = hf_vilt(hf, inputs)
    return out.pooler_output if isinstance(hf, transformers.ViltModel) else out.logits


@pytest.mark.parametrize("name", list(VILT_CLASSES))
def test_vilt_export_round_trip(inputs, tmp_path, name):
    """HF -> vlfm -> HF: the exported directory loads into the same class with exactly its keys, holds
    the same tensors and gives the same outputs."""
    torch.manual_seed(0)
    hf = getattr(transformers, name)(transformers.ViltConfig(**VILT, **VILT_CLASSES[name], **EAGER)).eval()
    cfg, params = load_hf(save(hf, tmp_path / "in"))
    save_hf(cfg, params, tmp_path / "out")
    again = reload(type(hf), str(tmp_path / "out"))
    original, written = load_file(str(tmp_path / "in" / "model.safetensors")), load_file(
        str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    np.testing.assert_allclose(_vilt_call(again, inputs).numpy(), _vilt_call(hf, inputs).numpy(), rtol=1e-6,
                               atol=1e-6)


def test_vilt_export_of_an_untied_mlm_decoder(inputs, tmp_path):
    """vlfm trains ViLT's MLM decoder apart from the word embeddings: HF then gets it untied, as trained."""
    cfg = dict(name="vilt", vocab_size=99, max_text_len=16, image_size=32, patch_size=8, width=32, depth=2,
               num_heads=4, mlp_dim=37, mlm=True, scan=True)
    batch = vilt_batch(inputs)
    params = build_model(cfg).init(jax.random.key(0), {k: jnp.asarray(v) for k, v in batch.items()})["params"]
    save_hf(cfg, params, tmp_path)
    again = reload(transformers.ViltForMaskedLM, str(tmp_path))
    check("exported untied vilt_mlm logits", _vilt_call(again, inputs), run(cfg, params, batch)["mlm_logits"],
          mask=inputs["mask"].numpy().astype(bool))


def test_vilt_export_refuses_heads_hf_lacks(tmp_path):
    cfg = dict(name="vilt", vocab_size=99, max_text_len=16, image_size=32, patch_size=8, width=32, depth=2,
               num_heads=4, mlp_dim=37, itm="random")
    with pytest.raises(ValueError, match="HF ViLT has no equivalent of {'itm': 'random'}"):
        save_hf(cfg, {}, tmp_path)


def test_vilt_retrieval_head_is_rejected(tmp_path):
    hf = transformers.ViltForImageAndTextRetrieval(transformers.ViltConfig(**VILT))
    with pytest.raises(ValueError, match="rank_output"):
        load_hf(save(hf, tmp_path))


def test_vilt_starts_from_a_vit(tmp_path):
    """ViLT is initialised from a ViT: the encoder, patch/position embeddings, final LN and pooler."""
    from vlfm.convert.hf_fusion import vilt_params_from_vit
    from vlfm.train.config import load_config
    from vlfm.train.init_from import merge_params

    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=37, image_size=32, patch_size=8))
    vit_cfg, vit_params = load_hf(save(vit, tmp_path / "vit"))
    cfg = dict(name="vilt", vocab_size=99, max_text_len=16, image_size=32, patch_size=8, width=32, depth=2,
               num_heads=4, mlp_dim=37)
    batch = {"image": jnp.zeros((1, 32, 32, 3)), "text": jnp.zeros((1, 4), jnp.int32)}
    vilt = nn.meta.unbox(build_model(cfg).init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                               batch)["params"])
    merged = vilt_params_from_vit(vilt, vit_params["image_tower"])
    # config.init_from with configs/vilt_b32.py's rename does the same from the whole imported model.
    rename = load_config("configs/vilt_b32.py").init_from.rename
    via_config, report = merge_params(vilt, vit_params, rename=rename)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(via_config)))
    assert "text_embed/token_embed/embedding" in report["fresh"] and len(report["loaded"]) > 10
    np.testing.assert_array_equal(merged["encoder"]["layers"]["attn"]["query"]["kernel"],
                                  vit_params["image_tower"]["encoder"]["layers"]["attn"]["query"]["kernel"])
    np.testing.assert_array_equal(merged["pooler"]["kernel"], vit_params["image_tower"]["pooler"]["kernel"])
    np.testing.assert_array_equal(merged["text_embed"]["token_embed"]["embedding"],
                                  np.asarray(vilt["text_embed"]["token_embed"]["embedding"]))
    # An image-only ViLT pass through the ViT's weights equals the ViT (no text tokens attend).
    with torch.no_grad():
        ref = vit(pixel_values=torch.zeros(1, 3, 32, 32)).last_hidden_state.numpy()
    model = build_model(cfg)
    tokens = model.apply({"params": merged}, batch, method=lambda m, b: m.ln_final(m.encoder(
        m.image_embed(b["image"]), train=False)))
    check("vilt-from-vit image tokens", tokens, ref)


# ----------------------------------------------------------------------------------------------------
# BridgeTower


def _bt_config(link="add", **extra):
    return transformers.BridgeTowerConfig(**BT, link_tower_type=link, **extra, **EAGER)


def _perturb_link_towers(model):
    """The scaled_add / interpolate scalars start at 1 and 0.5; move them so the test sees them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("scaled_factor", "beta")):
                p.fill_(0.3 if name.endswith("beta") else 1.7)


@pytest.mark.parametrize("link,scan", [("add", True), ("add", False), ("scaled_add", True), ("interpolate", True)])
def test_bridgetower_model_parity(inputs, tmp_path, link, scan):
    torch.manual_seed(0)
    hf = transformers.BridgeTowerModel(_bt_config(link)).eval()
    _perturb_link_towers(hf)
    cfg, params = load_hf(save(hf, tmp_path), scan=scan)
    assert cfg["name"] == "bridgetower" and cfg["bridge"] == link and cfg["text"]["pos_offset"] == 2
    ref = hf_bt(hf, inputs)
    out = fused(cfg, params, bt_batch(inputs))
    real = inputs["mask"].numpy().astype(bool)
    check(f"bridgetower {link} text_features", out["text_tokens"], ref.text_features, mask=real)
    check(f"bridgetower {link} image_features", out["image_tokens"], ref.image_features)
    check(f"bridgetower {link} pooler_output", out["pooled"], ref.pooler_output)


def test_bridgetower_mlm_and_itm_parity(inputs, tmp_path):
    torch.manual_seed(0)
    mlm = transformers.BridgeTowerForMaskedLM(_bt_config()).eval()
    cfg, params = load_hf(save(mlm, tmp_path / "mlm"))
    assert cfg["mlm"]
    check("bridgetower_mlm logits", run(cfg, params, bt_batch(inputs))["mlm_logits"], hf_bt(mlm, inputs).logits,
          mask=inputs["mask"].numpy().astype(bool))
    itm = transformers.BridgeTowerForImageAndTextRetrieval(_bt_config()).eval()
    cfg, params = load_hf(save(itm, tmp_path / "itm"))
    assert cfg["itm"] == "random"
    check("bridgetower_itm logits", run(cfg, params, bt_batch(inputs))["itm_logits"], hf_bt(itm, inputs).logits)


def test_bridgetower_contrastive_parity(inputs, tmp_path):
    torch.manual_seed(0)
    hf = transformers.BridgeTowerForContrastiveLearning(
        _bt_config(contrastive_hidden_size=16, logit_scale_init_value=2.6592)).eval()
    cfg, params = load_hf(save(hf, tmp_path))
    assert cfg["contrastive_dim"] == 16 and cfg["contrastive_cross"]
    ref = hf_bt(hf, inputs)
    out = run(cfg, params, bt_batch(inputs))
    check("bridgetower_itc text_embeds", out["text_embed"], ref.text_embeds)
    check("bridgetower_itc image_embeds", out["image_embed"], ref.image_embeds)
    check("bridgetower_itc cross_embeds", out["cross_embed"], ref.cross_embeds)
    np.testing.assert_allclose(float(out["logit_scale"]), np.exp(2.6592), rtol=1e-6)


BT_CLASSES = {"BridgeTowerModel": dict(link="scaled_add"), "BridgeTowerForMaskedLM": {},
              "BridgeTowerForImageAndTextRetrieval": {},
              "BridgeTowerForContrastiveLearning": dict(contrastive_hidden_size=16, logit_scale_init_value=2.6592)}


def _bt_main_output(hf, inputs):
    out = hf_bt(hf, inputs)
    if isinstance(hf, transformers.BridgeTowerModel):
        return out.pooler_output
    return out.cross_embeds if isinstance(hf, transformers.BridgeTowerForContrastiveLearning) else out.logits


@pytest.mark.parametrize("name", list(BT_CLASSES))
def test_bridgetower_export_round_trip(inputs, tmp_path, name):
    """HF -> vlfm -> HF: same class, exactly its keys, the same tensors and outputs."""
    torch.manual_seed(0)
    hf = getattr(transformers, name)(_bt_config(**BT_CLASSES[name])).eval()
    _perturb_link_towers(hf)
    cfg, params = load_hf(save(hf, tmp_path / "in"))
    save_hf(cfg, params, tmp_path / "out")
    again = reload(type(hf), str(tmp_path / "out"))
    original, written = load_file(str(tmp_path / "in" / "model.safetensors")), load_file(
        str(tmp_path / "out" / "model.safetensors"))
    original = {k: v for k, v in original.items() if not k.endswith("position_ids")}
    assert set(written) == set(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    np.testing.assert_allclose(_bt_main_output(again, inputs).numpy(), _bt_main_output(hf, inputs).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_bridgetower_export_refuses_what_hf_cannot_express(inputs, tmp_path):
    torch.manual_seed(0)
    cfg, params = load_hf(save(transformers.BridgeTowerModel(_bt_config()), tmp_path / "in"))
    with pytest.raises(ValueError, match=r"cannot express these settings of the vlfm model: {'ln_eps': 1e-06}"):
        save_hf(dict(cfg, ln_eps=1e-6), params, tmp_path / "out")  # HF's fusion layers take the text tower's eps
    with pytest.raises(ValueError, match="HF BridgeTower has no equivalent of {'vqa_answers': 3}"):
        save_hf(dict(cfg, vqa_answers=3), params, tmp_path / "out")


def test_bridgetower_unsupported_settings_are_rejected(tmp_path):
    hf = transformers.BridgeTowerModel(transformers.BridgeTowerConfig(**BT, share_link_tower_layers=True))
    with pytest.raises(ValueError, match="share_link_tower_layers"):
        load_hf(save(hf, tmp_path))


def test_bridgetower_with_unequal_tower_depths_is_rejected(tmp_path):
    """HF skips the vision layers above the text tower's depth; vlfm would bridge other layers."""
    config = dict(BT, vision_config=dict(BT["vision_config"], num_hidden_layers=4))
    hf = transformers.BridgeTowerModel(transformers.BridgeTowerConfig(**config))
    with pytest.raises(ValueError, match="vision depth 4 differs from text depth 3"):
        load_hf(save(hf, tmp_path))


def test_cli_imports_fusion_checkpoints(tmp_path):
    import json

    from vlfm.convert.__main__ import main
    from vlfm.core.checkpoint import load_params

    torch.manual_seed(0)
    path = save(transformers.ViltForMaskedLM(transformers.ViltConfig(**VILT)), tmp_path / "hf")
    assert main(["import", path, str(tmp_path / "vlfm")]) == 0
    cfg = json.loads((tmp_path / "vlfm" / "model_config.json").read_text())
    assert cfg["name"] == "vilt" and cfg["mlm"]
    want = load_hf(path)[1]
    got = load_params(str(tmp_path / "vlfm" / "params"))
    np.testing.assert_array_equal(got["mlm_head"]["mlm_decoder"]["kernel"], want["mlm_head"]["mlm_decoder"]["kernel"])
