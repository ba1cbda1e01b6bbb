"""``python -m vlfm.caption``: a tiny generative model's params export and two PNG files written here give
the captions that generating from the same pixels by hand gives, the same again from the workdir; the
config's captioning options are the defaults that ``--decode`` overrides; bad files and options fail
naming them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.helpers import TinyCaptioner, register_tiny_captioner
from vlfm.caption.__main__ import main, parse_decode
from vlfm.core.checkpoint import export_params
from vlfm.core.tree import strip_boxes
from vlfm.data import shapes
from vlfm.data.tokenizers import WordTokenizer
from vlfm.models.decoding import GenerateConfig, generate
from vlfm.train.config import load_config, save_workdir_config

TOKENIZER = WordTokenizer.for_shapes()
MAX_LEN, SIZE = 16, 8

CONFIG = f'''
import ml_collections
from vlfm.train.config import base_config


def get_config(arg=None):
    c = base_config()
    c.model = ml_collections.ConfigDict(dict(name="{register_tiny_captioner()}", vocab_size={TOKENIZER.vocab_size},
                                             max_len={MAX_LEN}, width=16))
    c.losses = ml_collections.ConfigDict(dict(caption_ce=dict(logits_key="logits", labels_key="text")))
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
    export_params(params, str(root / "wd" / "params"))  # a training workdir: its params export and config
    save_workdir_config(load_config(str(root / "tiny.py")), root / "wd")
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


def _by_hand(model, params, images, **options):
    """Generated ids without the command: the PNGs' pixels scaled as the shapes data scales them, the data
    tokenizer's specials; each row up to and including EOS."""
    pixels = jnp.asarray(images.astype(np.float32) / 127.5 - 1.0)
    config = GenerateConfig(bos_id=TOKENIZER.bos_id, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, **options)
    gen = generate(model, params, {"image": pixels}, config)
    return [list(np.asarray(t)[:n]) for t, n in zip(gen["tokens"], gen["lengths"])]


def test_caption_command_prints_the_models_captions_for_image_files(setup, capsys):
    root, model, params, images, paths = setup
    base = ["--config", str(root / "tiny.py"), "--params", str(root / "wd" / "params")]
    rc, out, err = _run(capsys, *base, *paths)
    assert rc == 0, err
    greedy = _by_hand(model, params, images, max_length=9)  # greedy; max_length from the config's eval
    assert out.splitlines() == [f"{p}\t{TOKENIZER.decode(ids)}" for p, ids in zip(paths, greedy)]
    assert any(TOKENIZER.decode(ids).split() for ids in greedy)
    assert _run(capsys, "--workdir", str(root / "wd"), *paths)[1] == out  # its saved config; deterministic

    # --decode wins over the config's options (here set by a --config override): greedy's first 3 tokens.
    rc, out, err = _run(capsys, *base, "--config.evals.captioning.generate.max_length=12", "--decode",
                        "max_length=3", *paths)
    assert rc == 0, err
    assert out.splitlines() == [f"{p}\t{TOKENIZER.decode(ids[:3])}" for p, ids in zip(paths, greedy)]
    assert any(TOKENIZER.decode(ids[:3]) != TOKENIZER.decode(ids) for ids in greedy)  # so the option shows


def test_caption_command_errors(setup, capsys):
    root, _, _, _, paths = setup
    base = ["--config", str(root / "tiny.py"), "--params", str(root / "wd" / "params")]
    rc, out, err = _run(capsys, *base, paths[0], str(root / "missing.png"))
    assert rc == 2 and not out and "no image file" in err and "missing.png" in err
    rc, _, err = _run(capsys, "--config", str(root / "tiny.py"), "--params", str(root / "nowhere"), paths[0])
    assert rc == 2 and "nowhere" in err
    (root / "text.png").write_text("not an image")
    rc, out, err = _run(capsys, *base, paths[0], str(root / "text.png"))
    assert rc == 2 and not out and "text.png" in err and "not a readable image" in err
    rc, _, err = _run(capsys, *base, "--decode", "beam_szie=3", paths[0])
    assert rc == 2 and "beam_szie" in err and "valid: method, max_length" in err and "beam_size" in err
    rc, _, err = _run(capsys, *base, "--decode", "method=bean", paths[0])
    assert rc == 2 and "unknown generation method 'bean'" in err
    rc, _, err = _run(capsys, *base, "--decode", "max_length=16", paths[0])
    assert rc == 2 and f"exceeds the decoder's {MAX_LEN} positions" in err
    rc, _, err = _run(capsys, *base, "--decode", "top_k=many", paths[0])
    assert rc == 2 and "top_k must be of type int" in err
    with pytest.raises(SystemExit, match="unknown argument '--beam_size=3'"):
        main([*base, "--beam_size=3", paths[0]])
    with pytest.raises(SystemExit, match="exactly one of --params, --workdir"):
        main([*base, "--workdir", str(root / "wd"), paths[0]])
    assert parse_decode(["max_positions=None", "temperature=2", "method=sample"]) == dict(
        max_positions=None, temperature=2.0, method="sample")
