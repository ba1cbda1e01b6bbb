"""Shared test utilities: run the trainer CLI in a fresh process, tiny configs, a tiny generative model."""

from __future__ import annotations

import os
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp

from vlfm.models import layers
from vlfm.models.registry import MODELS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A very small CLIP for fast trainer tests (the real tiny config is configs/clip_tiny.py).
SMALL_CLIP = [
    "--config.model.image.depth=1", "--config.model.image.width=32", "--config.model.image.mlp_dim=64",
    "--config.model.image.patch_size=8",
    "--config.model.text.depth=1", "--config.model.text.width=32", "--config.model.text.mlp_dim=64",
    "--config.model.embed_dim=32", "--config.data.num_examples=2000", "--config.data.batch_size=32",
    "--config.evals.retrieval.num_examples=100", "--config.evals.zeroshot.num_examples=100",
]


def trainer_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_trainer(args: list[str], devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vlfm.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=trainer_env(devices), capture_output=True, text=True, timeout=timeout)


class TinyCaptioner(nn.Module):
    """A test-only model following the generation contract: image patches -> a linear context; a scanned
    causal decoder with cross-attention to it. ``__call__`` gives teacher-forced ``logits`` of ``text``."""

    vocab_size: int = 12
    max_len: int = 16
    width: int = 32
    decode: bool = False

    def setup(self):
        block = dict(num_heads=2, mlp_dim=2 * self.width, causal=True, cross_attention=True, decode=self.decode)
        self.embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(1.0))
        self.pos = self.param("pos", nn.initializers.normal(1.0), (self.max_len, self.width))
        self.image_proj = nn.Dense(self.width)
        self.decoder = layers.Encoder(2, block, scan=True)
        self.ln = nn.LayerNorm()
        self.head = nn.Dense(self.vocab_size, kernel_init=nn.initializers.normal(0.5))

    @property
    def max_decode_length(self) -> int:
        return self.max_len

    def generation_context(self, batch, *, train=False):
        image = batch["image"]
        return self.image_proj(image.reshape(image.shape[0], -1, image.shape[-1]))

    def decode_logits(self, tokens, context, *, positions=None, train=False):
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.embed(tokens) + self.pos[positions]
        h = self.decoder(x, context=context, train=train)
        return self.head(self.ln(h)).astype(jnp.float32)

    def __call__(self, batch, train=False):
        return {"logits": self.decode_logits(batch["text"], self.generation_context(batch, train=train), train=train)}


TINY_CAPTIONER = "test_tiny_captioner"


def register_tiny_captioner() -> str:
    """Registers ``TinyCaptioner`` as a model (once) so configs can name it; returns the name."""
    if TINY_CAPTIONER not in MODELS:
        MODELS.register(TINY_CAPTIONER)(TinyCaptioner)
    return TINY_CAPTIONER
