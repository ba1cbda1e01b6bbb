import glob
import json
import os

import ml_collections
import numpy as np
import pytest

import vlfm
from tests.helpers import REPO, run_trainer
from vlfm.train.config import ConfigError, base_config, load_config


def test_overrides_are_typed_and_applied():
    c = load_config("configs/clip_tiny.py", ["total_steps=7", "model.image.depth=1", "optimizer.lr.peak=3e-4",
                                             "mesh.shape=(1,-1,1)", "async_checkpoints=false"])
    assert c.total_steps == 7 and c.model.image.depth == 1 and c.optimizer.lr.peak == 3e-4
    assert c.mesh.shape == (1, -1, 1) and c.async_checkpoints is False


def test_override_typo_names_the_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: .*depth"):
        load_config("configs/clip_tiny.py", ["model.image.dpeth=3"])
    with pytest.raises(ConfigError, match="valid keys: .*total_steps"):
        load_config("configs/clip_tiny.py", ["total_stesp=3"])


def test_wrong_type_fails():
    with pytest.raises(ConfigError, match="total_steps"):
        load_config("configs/clip_tiny.py", ["total_steps=abc"])


def test_config_file_typo_names_valid_top_level_keys(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from vlfm.train.config import base_config\n"
                    "def get_config():\n    c = base_config()\n    c.unlock()\n    c.totl_steps = 3\n    return c\n")
    with pytest.raises(ConfigError, match="totl_steps.*valid keys: .*total_steps"):
        load_config(str(path))


def test_model_field_typo_names_valid_fields():
    from vlfm.models import build_model
    c = load_config("configs/clip_tiny.py", ["model.image.depth=1"])
    cfg = c.model.to_dict()
    cfg["image"]["widht"] = 3
    with pytest.raises(KeyError, match="widht.*valid keys: .*width"):
        build_model(cfg)
    with pytest.raises(KeyError, match="valid names: .*dual_encoder"):
        build_model(dict(name="dual_encodr"))


def test_cli_reports_config_errors_cleanly(tmp_path):
    out = run_trainer(["--config", "configs/clip_tiny.py", "--workdir", str(tmp_path), "--config.model.image.dpeth=2"])
    assert out.returncode == 2
    assert "valid keys" in out.stderr and "Traceback" not in out.stderr


def test_base_config_keys_are_stable():
    assert {"model", "losses", "data", "optimizer", "mesh", "evals", "total_steps"} <= set(base_config().keys())


# ----------------------------------------------------------------------------------------------------
# The schema: overrides reach every key the code accepts; unknown keys fail everywhere.


def test_override_sets_keys_the_file_leaves_at_their_default():
    c = load_config("configs/clip_tiny.py", ["model.image.remat=full", "model.image.layer_scale=0.1",
                                             "model.text.init_std=None", "optimizer.b1=0.95",
                                             "optimizer.layer_decay.decay=0.5", "ema_decay=0.999",
                                             "evals.retrieval.batch_size=64", "data.view=image_label"])
    assert c.model.image.remat == "full" and c.model.image.layer_scale == 0.1 and c.model.text.init_std is None
    assert c.optimizer.b1 == 0.95 and c.optimizer.layer_decay.decay == 0.5 and c.ema_decay == 0.999
    assert c.evals.retrieval.batch_size == 64 and c.data.view == "image_label"
    with pytest.raises(ConfigError, match="expected a bool"):
        load_config("configs/clip_tiny.py", ["model.image.qkv_bias=maybe"])
    with pytest.raises(ConfigError, match="cannot parse 'x' as a int"):
        load_config("configs/clip_tiny.py", ["model.image.num_classes=x"])


@pytest.mark.parametrize("override, valid", [
    ("model.image.remmat=full", "remat"),
    ("model.embed_dmi=3", "embed_dim"),
    ("optimizer.b11=0.9", "b1"),
    ("optimizer.lr.peek=1", "peak"),
    ("optimizer.layer_decay.decy=1", "decay"),
    ("data.num_exmaples=3", "num_examples"),
    ("evals.zeroshot.num_exmaples=3", "num_examples"),
    ("gradient_combiner.ratio=3", "name"),
    ("mesh.shap=(1,1,1)", "shape"),
])
def test_override_typo_in_any_section_names_the_valid_keys(override, valid):
    with pytest.raises(ConfigError, match=f"valid keys: .*{valid}"):
        load_config("configs/clip_tiny.py", [override])


def _mutated(path, key, value):
    c = load_config("configs/ufo_tiny.py")
    node = c
    for part in path.split("."):
        node = node[part]
    with node.unlocked():
        node[key] = value
    return c


@pytest.mark.parametrize("path, key, valid", [
    ("model", "widht", "width"),
    ("tasks.image", "wieght", "weight"),
    ("tasks.image.data", "view_", "view"),
    ("tasks.text.losses.kd_text", "temprature", "temperature"),
    ("teachers.vit", "parms", "params"),
    ("evals.image", "splt", "split"),
    ("gradient_combiner", "ratoi", "ratio"),
])
def test_config_file_typos_fail_at_load_in_every_section(path, key, valid):
    """A typo anywhere (model, tasks, data, losses, teachers, evals, combiner) fails before anything is built."""
    from vlfm.train.config import validate_config

    with pytest.raises(ConfigError, match=f"'{path}.{key}'.*valid keys: .*{valid}"):
        validate_config(_mutated(path, key, 1))


def test_data_field_and_mixture_keys_are_checked():
    from vlfm.train.config import validate_config

    c = base_config()
    c.model = dict(name="image_classifier", image=dict(name="vit"))
    c.data = dict(name="webdataset", urls="x.tar", image=dict(size=32, flip=True), batch_size=8)
    validate_config(c)
    c.data.image.szie = 3
    with pytest.raises(ConfigError, match="data.image.szie.*preprocessing field image.*valid keys: .*size"):
        validate_config(c)
    c.data = dict(name="mixture", batch_size=8, datasets=dict(
        shapes=dict(weight=2.0, num_examples=10), web=dict(name="webdataset", urls="x.tar", shuffle_bufer=3)))
    with pytest.raises(ConfigError, match="data.datasets.web.shuffle_bufer.*valid keys: .*shuffle_buffer"):
        validate_config(c)
    del c.data.datasets.web["shuffle_bufer"]
    validate_config(c)
    c.data.name = "shapez"
    with pytest.raises(ConfigError, match="unknown dataset 'shapez'; valid names: .*shapes"):
        validate_config(c)


def test_every_config_file_loads():
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        load_config(path)


def test_task_num_workers_is_honoured():
    """A task's own ``data.num_workers`` wins over the run's default (it was silently replaced)."""
    from vlfm.train.tasks import build_iterators, build_tasks

    c = base_config()
    c.tasks = dict(a=dict(data=dict(name="shapes", num_examples=64, image_size=8, view="image_label", batch_size=8,
                                    num_workers=0), losses=dict(softmax_xent={})))
    its = build_iterators(build_tasks(c), seed=0, num_workers=1)
    assert its.iterators["a"].num_workers == 0
    assert next(its.iterators["a"])["image"].shape == (8, 8, 8, 3)


# ----------------------------------------------------------------------------------------------------
# The resolved config in the workdir.


def _describe(value, path=""):
    """Every leaf with its exact type, and every placeholder with its declared type."""
    out = []
    if isinstance(value, ml_collections.ConfigDict):
        out.append((path, "ConfigDict"))
        for k in value.keys():
            ref = value._fields[k]
            if isinstance(ref, ml_collections.FieldReference):
                out.append((f"{path}.{k}", "placeholder", ref.get_type().__name__))
            out += _describe(value[k], f"{path}.{k}")
    elif isinstance(value, (tuple, list, dict)):
        out.append((path, type(value).__name__, len(value)))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            out += _describe(v, f"{path}[{k!r}]")
    else:
        out.append((path, type(value).__name__, repr(value)))
    return out


@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))))
def test_workdir_config_round_trips_exactly(name, tmp_path):
    from vlfm.train.config import load_workdir_config, save_workdir_config

    config = load_config(os.path.join(REPO, "configs", name), ["ema_decay=0.99"] if name == "clip_tiny.py" else [])
    path = save_workdir_config(config, tmp_path / "run")
    record = json.loads(path.read_text())
    assert record["vlfm_version"] == vlfm.__version__ and record["commit"]
    loaded = load_workdir_config(tmp_path / "run")
    assert _describe(loaded) == _describe(config)
    assert str(loaded) == str(config)


def test_workdir_config_keeps_placeholders_tuples_and_nested_dicts(tmp_path):
    from vlfm.train.config import load_workdir_config, save_workdir_config

    c = base_config()
    c.mesh.rules = (("embed", None), ("vocab", "tensor"))
    c.data = dict(name="mixture", datasets=dict(a=dict(name="shapes", weight=1.0)), batch_size=8)
    c.optimizer.lr_multipliers = ((r".*head.*", 10.0),)
    c.extra_list = [1, (2, 3), {"x": (4,)}]
    save_workdir_config(c, tmp_path)
    loaded = load_workdir_config(tmp_path)
    assert _describe(loaded) == _describe(c)
    assert loaded.peak_tflops is None and loaded._fields["peak_tflops"].get_type() is float
    loaded.peak_tflops = 1.5  # still a float placeholder
    with pytest.raises(TypeError):
        loaded.peak_tflops = "x"
    assert isinstance(loaded.extra_list[2], dict) and loaded.extra_list[2]["x"] == (4,)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_workdir_config(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------------
# The command line.


def test_only_config_errors_are_relabelled(monkeypatch, capsys):
    """A KeyError from inside training keeps its traceback (it propagates); a ConfigError is one line, status 2."""
    from vlfm.train import __main__ as cli
    from vlfm.train import trainer

    def failing_train(config, workdir, dry_run=False):
        raise KeyError("'logits' missing from the model outputs")

    monkeypatch.setattr(trainer, "train", failing_train)
    with pytest.raises(KeyError, match="logits"):
        cli.main(["--config", "configs/clip_tiny.py", "--workdir", "unused"])

    def config_error(config, workdir, dry_run=False):
        raise ConfigError("teacher config file 'x.py' does not exist")

    monkeypatch.setattr(trainer, "train", config_error)
    assert cli.main(["--config", "configs/clip_tiny.py", "--workdir", "unused"]) == 2
    assert "config error: teacher config file" in capsys.readouterr().err


def test_cli_a_failed_checkpoint_write_ends_with_its_message_after_the_storage_error(monkeypatch, caplog):
    """Exit status 6; the storage's error (the cause) is logged with its traceback, then the one line."""
    import errno

    from vlfm.core.checkpoint import CheckpointWriteError
    from vlfm.train import __main__ as cli
    from vlfm.train import trainer

    def disk_full(config, workdir, dry_run=False):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise CheckpointWriteError("checkpoint step 2 could not be written to W: the disk is full", step=2,
                                       last_committed=1, disk_full=True) from e

    monkeypatch.setattr(trainer, "train", disk_full)
    assert cli.main(["--config", "configs/clip_tiny.py", "--workdir", "unused"]) == 6
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors[-1].getMessage() == "checkpoint step 2 could not be written to W: the disk is full"
    assert isinstance(errors[-2].exc_info[1], OSError) and errors[-2].exc_info[1].errno == errno.ENOSPC


def test_cli_a_negative_batch_size_fails_at_load_naming_the_key(capsys):
    from vlfm.train import __main__ as cli

    assert cli.main(["--config", "configs/clip_tiny.py", "--workdir", "unused", "--config.data.batch_size=-8"]) == 2
    assert "config value data.batch_size=-8 is invalid: it must be a positive integer" in capsys.readouterr().err


def test_cli_help_lists_options_and_config_fields():
    out = run_trainer(["--help"], timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--config PATH.py", "--workdir DIR", "--config.a.b=VALUE", "--dry_run", "--help"):
        assert flag in out.stdout, out.stdout
    out = run_trainer(["--config", "configs/clip_tiny.py", "--config.model.image.depth=1", "--help"], timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[model.image] model.image (tower vit)" in out.stdout
    assert "  depth = 1" in out.stdout and "remat='auto'" in out.stdout  # set fields, then the other valid keys
    assert "[optimizer.lr] optimizer.lr (learning-rate schedule)" in out.stdout


def test_convert_export_accepts_a_training_workdir(tmp_path):
    """``python -m vlfm.convert export WORKDIR HF_DIR``: the run's params export and resolved model config."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from vlfm.convert.__main__ import main
    from vlfm.core.checkpoint import export_params, load_params
    from vlfm.train.config import save_workdir_config

    hf = transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                      intermediate_size=24, image_size=16, patch_size=8))
    hf.save_pretrained(tmp_path / "hf_in", safe_serialization=True)
    assert main(["import", str(tmp_path / "hf_in"), str(tmp_path / "imported")]) == 0
    config = base_config()
    config.model = json.loads((tmp_path / "imported" / "model_config.json").read_text())
    workdir = tmp_path / "run"
    save_workdir_config(config, workdir)
    export_params(load_params(str(tmp_path / "imported" / "params")), str(workdir / "params"))
    assert main(["export", str(workdir), str(tmp_path / "hf_out")]) == 0
    original, written = load_file(str(tmp_path / "hf_in" / "model.safetensors")), load_file(
        str(tmp_path / "hf_out" / "model.safetensors"))
    assert set(written) == set(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    record = json.loads((tmp_path / "hf_out" / "vlfm_export.json").read_text())
    assert record["run"] == json.loads((workdir / "config.json").read_text())  # the run's config + commit
    assert record["model_config"] == config.model.to_dict() and record["commit"] == record["run"]["commit"]
    with pytest.raises(SystemExit):
        main(["export", str(workdir)])


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=-8", "data.batch_size=-8 is invalid: it must be a positive integer"),
    ("total_steps=0", "total_steps=0 is invalid"),
    ("grad_accum_steps=0", "grad_accum_steps=0 is invalid"),
    ("checkpoint_every=0", "checkpoint_every=0 is invalid"),
    ("optimizer.lr.peak=-0.001", "optimizer.lr.peak=-0.001 is invalid: it must be a finite number >= 0"),
    ("data.num_workers=-1", "data.num_workers=-1 is invalid: it must be an integer >= 0"),
    ("optimizer.lr.warmup_steps=-1", "optimizer.lr.warmup_steps=-1 is invalid"),
    ("ema_decay=1.5", "ema_decay=1.5 is invalid: it must be a number in \\[0, 1\\]"),
    ("evals.retrieval.every=-1", "evals.retrieval.every=-1 is invalid"),
])
def test_out_of_range_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/clip_tiny.py", [override])


def test_task_batch_sizes_are_checked_too():
    from vlfm.train.config import validate_config

    c = load_config("configs/clip_tiny.py")
    with c.unlocked():
        c.tasks = ml_collections.ConfigDict({"a": {"data": {"name": "shapes", "batch_size": 0}}})
    with pytest.raises(ConfigError, match="tasks.a.data.batch_size=0 is invalid"):
        validate_config(c)
