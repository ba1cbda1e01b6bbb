"""``python -m vlfm.caption``: a tiny generative model's params export and two PNG files written here give
the captions that generating from the data's own images gives; missing files and bad options fail clearly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.helpers import TinyCaptioner, register_tiny_captioner
from vlfm.caption.__main__ import main
from vlfm.core.checkpoint import export_params
from vlfm.core.tree import strip_boxes
from vlfm.data import shapes
from vlfm.data.tokenizers import WordTokenizer
from vlfm.models.decoding import GenerateConfig, generate

TOKENIZER = WordTokenizer.for_shapes()
MAX_LEN, SIZE = 16, 8

CONFIG = f'''
import ml_collections
from vlfm.train.config import base_config


def get_config(arg=None):
    c = base_config()
    c.model = ml_collections.ConfigDict(dict(name="{register_tiny_captioner()}", vocab_size={TOKENIZER.vocab_size},
                                             max_len={MAX_LEN}, width=16))
    c.data.update(num_examples=4, image_size={SIZE}, max_len={MAX_LEN})
    c.evals = ml_collections.ConfigDict(dict(captioning=dict(num_examples=4, generate=dict(max_length=9))))
    return c
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption")
    (root / "tiny.py").write_text(CONFIG)
    model = TinyCaptioner(vocab_size=TOKENIZER.vocab_size, max_len=MAX_LEN, width=16)
    batch = {"image": jnp.zeros((1, SIZE, SIZE, 3)), "text": jnp.zeros((1, MAX_LEN), jnp.int32)}
    params = strip_boxes(jax.jit(model.init)(jax.random.key(5), batch)["params"])  # as the trainer exports them
    export_params(params, str(root / "params"))
    images = shapes.generate("validation", 2, image_size=SIZE)["image"]
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"img{i}.png")
        paths.append(str(root / f"img{i}.png"))
    return root, model, params, images, paths


def _run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_caption_command_prints_the_models_captions_for_image_files(setup, capsys):
    root, model, params, images, paths = setup
    rc, out, err = _run(capsys, "--config", str(root / "tiny.py"), "--params", str(root / "params"),
                        "--method=beam", "--beam_size", "2", *paths)
    assert rc == 0, err
    # By hand: the PNGs' pixels scaled as the shapes data scales them; the config's max_length, the flags'
    # method; the data tokenizer's ids and words.
    pixels = jnp.asarray(images.astype(np.float32) / 127.5 - 1.0)
    config = GenerateConfig(method="beam", beam_size=2, max_length=9, bos_id=TOKENIZER.bos_id,
                            eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id)
    gen = generate(model, params, {"image": pixels}, config)
    want = [TOKENIZER.decode(list(np.asarray(t)[:n])) for t, n in zip(gen["tokens"], gen["lengths"])]
    assert out.splitlines() == [f"{p}\t{c}" for p, c in zip(paths, want)]
    assert any(c.split() for c in want)


def test_caption_command_errors(setup, capsys):
    root, _, _, _, paths = setup
    base = ["--config", str(root / "tiny.py"), "--params", str(root / "params")]
    rc, _, err = _run(capsys, *base, paths[0], str(root / "missing.png"))
    assert rc == 2 and "no image file" in err and "missing.png" in err
    rc, _, err = _run(capsys, "--config", str(root / "tiny.py"), "--params", str(root / "nowhere"), paths[0])
    assert rc == 2 and "nowhere" in err
    (root / "text.png").write_text("not an image")
    rc, _, err = _run(capsys, *base, str(root / "text.png"))
    assert rc == 2 and "text.png" in err and "not a readable image" in err
    with pytest.raises(SystemExit, match=r"--beam_szie.*valid decoding options:.*beam_size"):
        main([*base, "--beam_szie=3", paths[0]])
    rc, _, err = _run(capsys, *base, "--method=bean", paths[0])
    assert rc == 2 and "unknown generation method 'bean'" in err
