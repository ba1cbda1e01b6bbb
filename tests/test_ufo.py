"""UFO end to end on the built-in data: teachers trained by vlfm, then the shared-encoder student."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import run_trainer
from vlfm.models import build_model
from vlfm.train.config import load_config


def _last_eval(workdir, key):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if key in r][-1]


@pytest.mark.slow
def test_ufo_learns_both_tasks_with_masking_and_distillation(tmp_path):
    short = ["--config.log_every=25"]
    for name, steps in (("vit_tiny", 150), ("bert_tiny", 100)):
        out = run_trainer(["--config", f"configs/{name}.py", "--workdir", str(tmp_path / name),
                           f"--config.total_steps={steps}", f"--config.checkpoint_every={steps}", *short])
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = run_trainer(["--config", "configs/ufo_tiny.py", "--workdir", str(tmp_path / "ufo"),
                       "--config.total_steps=200", "--config.checkpoint_every=100",
                       "--config.evals.image.every=200", "--config.evals.text.every=200",
                       "--config.evals.image.num_examples=300", "--config.evals.text.num_examples=300",
                       f"--config.teachers.vit.params={tmp_path / 'vit_tiny' / 'params'}",
                       f"--config.teachers.bert.params={tmp_path / 'bert_tiny' / 'params'}", *short])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    final = _last_eval(tmp_path / "ufo", "eval/image/accuracy")
    assert final["eval/image/accuracy"] > 4 / 56, final
    assert final["eval/text/accuracy"] > 2 * final["eval/text/unigram_baseline"], final
    train = _last_eval(tmp_path / "ufo", "train/image/kd_image/teacher_agreement")
    for key in ("train/text/kd_text/loss", "train/image/softmax_xent/accuracy", "train/text/masked_xent/accuracy",
                "train/image/grad_norm", "train/text/grad_norm"):
        assert key in train, sorted(train)


def test_ufo_ablation_flags_build_the_expected_configs():
    full = load_config("configs/ufo_tiny.py")
    assert full.gradient_combiner.name == "gradient_masking" and set(full.teachers.keys()) == {"vit", "bert"}
    no_mask = load_config("configs/ufo_tiny.py:no_mask")
    assert no_mask.gradient_combiner.name == "sum" and "kd_image" in no_mask.tasks.image.losses
    no_kd = load_config("configs/ufo_tiny.py:no_kd")
    assert not no_kd.teachers and "kd_image" not in no_kd.tasks.image.losses
    with pytest.raises(ValueError, match="valid"):
        load_config("configs/ufo_tiny.py:no_masking")


def test_ufo_shares_the_encoder_between_modalities():
    cfg = load_config("configs/ufo_tiny.py").model.to_dict()
    model = build_model(cfg)
    batch = {"image": jnp.ones((2, 32, 32, 3)), "text": jnp.array([[2, 5, 6, 3, 0, 0]] * 2),
             "text_mask": jnp.array([[1, 1, 1, 1, 0, 0]] * 2)}
    params = model.init(jax.random.key(0), batch)["params"]
    assert {"encoder", "ln_final", "image_patch_embed", "text_token_embed", "image_head", "mlm_decoder"} <= set(params)

    def image_loss(p):
        return jnp.sum(model.apply({"params": p}, {"image": batch["image"]})["image_tokens"] ** 2)

    def text_loss(p):
        b = {k: batch[k] for k in ("text", "text_mask")}
        return jnp.sum(model.apply({"params": p}, b)["text_tokens"] ** 2)

    g_img, g_txt = jax.grad(image_loss)(params), jax.grad(text_loss)(params)
    nonzero = lambda t: any(np.abs(np.asarray(x)).sum() > 0 for x in jax.tree.leaves(t))  # noqa: E731
    assert nonzero(g_img["encoder"]) and nonzero(g_txt["encoder"])  # both modalities train the shared stack
    assert not nonzero(g_img["text_token_embed"]) and not nonzero(g_txt["image_patch_embed"])


@pytest.mark.parametrize("variant,expected", [("", 134_466_850), (":shapes", 133_740_914)])
def test_ufo_base_parameter_count(variant, expected):
    """ImageNet-1k classifier by default, the built-in data's 56 classes with ``:shapes``."""
    import flax.linen as nn

    model = build_model(load_config(f"configs/ufo_base.py{variant}").model.to_dict())
    batch = {"image": jnp.zeros((1, 224, 224, 3)), "text": jnp.zeros((1, 16), jnp.int32)}
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes))) == expected
