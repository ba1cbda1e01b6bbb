"""A new model family is new modules plus one config: nothing outside this file changes.

The toy family below is a masked-patch image classifier: patches are embedded with the shared
``PatchEmbed`` and a scanned transformer stack, pooled, classified; in training a random subset of
patches is hidden (drawn from the ``masking`` stream of the forward contract) and a train-only
decoder (it has no parameters in an eval-mode init) regresses their mean pixel values through a loss
registered here. It trains through the one trainer, evaluates with a stock evaluator, exports its
parameters, and reports MFU from the traced FLOP count (it has no hand-written formula).
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlfm.core.checkpoint import load_params
from vlfm.evaluate import evaluate, obtain_config, weights_source
from vlfm.losses.registry import LOSSES
from vlfm.models import layers
from vlfm.models.registry import MODELS
from vlfm.train.config import base_config, load_workdir_config
from vlfm.train.trainer import train


@MODELS.register("toy_masked_patch_classifier")
class ToyMaskedPatchClassifier(nn.Module):
    """Patches -> transformer -> mean pool -> classes; in training also a masked-patch regressor."""

    num_classes: int = 56
    patch_size: int = 4
    width: int = 32
    depth: int = 2
    num_heads: int = 2
    mask_ratio: float = 0.25

    PREDICT = {"logits": lambda m, b: m(b)["logits"]}

    @nn.compact
    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        images = batch["image"].astype(jnp.float32)
        tokens, _ = layers.PatchEmbed(self.patch_size, self.width, name="patches")(images)
        out = {}
        if train:
            hide = jax.random.bernoulli(self.make_rng("masking"), self.mask_ratio, tokens.shape[:2])
            tokens = jnp.where(hide[..., None], 0.0, tokens)
            # The regression target: each patch's mean pixel value (what the hidden token must restore).
            p = self.patch_size
            b, h, w, c = images.shape
            patches = images.reshape(b, h // p, p, w // p, p, c).mean(axis=(2, 4, 5)).reshape(b, -1)
            out.update(patch_targets=patches, patch_hidden=hide)
        block = dict(num_heads=self.num_heads, mlp_dim=2 * self.width, norm="pre")
        x = layers.Encoder(self.depth, block, scan=True, name="encoder")(tokens, train=train)
        out["logits"] = layers.Proj((self.num_classes,), ("embed", "classes"), name="head")(x.mean(axis=1))
        if train:  # train-only module: only a train-mode init creates it
            out["patch_pred"] = layers.Proj((1,), ("embed", None), name="decoder")(x)[..., 0]
        return out


@LOSSES.register("toy_masked_patch_mse")
def masked_patch_mse(outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
    """Mean squared error of the hidden patches' predicted mean pixel values."""
    del batch
    hidden = outputs["patch_hidden"].astype(jnp.float32)
    err = jnp.square(outputs["patch_pred"] - outputs["patch_targets"]) * hidden
    return err.sum() / jnp.maximum(hidden.sum(), 1.0), {"hidden_fraction": hidden.mean()}


def toy_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.total_steps = 150
    c.model = ml_collections.ConfigDict(dict(name="toy_masked_patch_classifier", patch_size=4, width=32, depth=2))
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0), toy_masked_patch_mse=dict(weight=0.5)))
    c.data = ml_collections.ConfigDict(dict(name="shapes", view="image_label", num_examples=2000, image_size=32,
                                            max_objects=1, batch_size=64, num_workers=0, train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=3e-3, warmup_steps=10)
    c.evals = ml_collections.ConfigDict(dict(
        classification=dict(every=0, split="validation", num_examples=256)))
    c.log_every = 20
    c.checkpoint_every = 60
    return c


@pytest.mark.slow
def test_toy_family_trains_evaluates_exports_and_reports_mfu(tmp_path):
    workdir = str(tmp_path / "toy")
    untrained_config = toy_config()
    untrained_config.total_steps, untrained_config.optimizer.lr.peak = 1, 0.0
    untrained = train(untrained_config, str(tmp_path / "untrained"))
    results = train(toy_config(), workdir)

    accuracy = results["eval/classification/accuracy"]
    assert accuracy > 3 * max(untrained["eval/classification/accuracy"], 1 / 56), (accuracy, untrained)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    train_logs = [m for m in logged if "train/mfu" in m]
    assert train_logs and all(m["train/mfu"] > 0 and m["train/tflops_per_device"] > 0 for m in train_logs)
    losses = [m["train/toy_masked_patch_mse/loss"] for m in logged if "train/toy_masked_patch_mse/loss" in m]
    assert losses[-1] < losses[0], losses  # the train-only decoder learns too

    # The export holds the train-only decoder, and the resolved config names the new family.
    params = load_params(os.path.join(workdir, "params"))
    assert "decoder" in params and "head" in params
    assert load_workdir_config(workdir).model.name == "toy_masked_patch_classifier"
    assert np.isfinite(np.asarray(params["head"]["kernel"])).all()
    # Evaluation without training, from the export and the run's saved config, gives the trainer's figure.
    again = evaluate(obtain_config(None, workdir=workdir), weights_source("params", os.path.join(workdir, "params")))
    assert again["eval/classification/accuracy"] == accuracy
