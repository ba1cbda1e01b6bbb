import pytest

from tests.helpers import run_trainer
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
