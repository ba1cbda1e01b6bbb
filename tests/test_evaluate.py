"""``python -m vlfm.evaluate``: a config's evaluators on a run's weights, without training.

One tiny dual-encoder run (3 steps) is made in the test; evaluating its workdir, its params export and
its checkpoint gives exactly the trainer's final evaluation.
"""

import json
import os
import shutil

import pytest

from tests.helpers import REPO
from vlfm.evaluate.__main__ import main
from vlfm.core.checkpoint import export_params, load_params
from vlfm.train.config import load_config
from vlfm.train.trainer import train

TINY = f'''
from vlfm.train.config import load_config_file


def get_config(arg=None):
    c = load_config_file({os.path.join(REPO, "configs", "clip_tiny.py")!r})
    c.model.image.update(depth=1, width=16, mlp_dim=32, patch_size=8, num_heads=2)
    c.model.text.update(depth=1, width=16, mlp_dim=32, num_heads=2)
    c.model.embed_dim = 16
    c.data.update(num_examples=64, batch_size=16)
    c.update(total_steps=3, checkpoint_every=3, log_every=1, peak_tflops=1.0)
    c.evals.retrieval.update(num_examples=40, batch_size=16)  # 3 batches, the last one padded
    c.evals.zeroshot.update(num_examples=40, batch_size=16)
    if arg == "no_evals":
        c.evals = {{}}
    return c
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run: (config file, workdir, the trainer's final eval metrics)."""
    root = tmp_path_factory.mktemp("evaluate")
    config_file = root / "tiny.py"
    config_file.write_text(TINY)
    workdir = root / "run"
    results = train(load_config(str(config_file)), str(workdir))
    final = {k: v for k, v in results.items() if k.startswith("eval/") and not k.endswith("/seconds")}
    assert len(final) == 10, final
    return str(config_file), workdir, final


def _evaluate(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _metrics(text):
    return {k: v for k, v in json.loads(text).items() if not k.endswith("/seconds")}


def test_workdir_params_and_checkpoint_give_the_trainer_final_eval(run, capsys, tmp_path):
    config, workdir, final = run
    for weights in (["--workdir", str(workdir)], ["--params", str(workdir / "params")],
                    ["--checkpoint", str(workdir / "checkpoints")]):
        rc, out, err = _evaluate(capsys, "--config", config, *weights, "--json", str(tmp_path / "m.json"))
        assert rc == 0, err[-3000:]
        assert _metrics(out) == final, weights
        assert _metrics((tmp_path / "m.json").read_text()) == final
    # A workdir without checkpoints falls back to its params export.
    only_params = tmp_path / "only_params"
    shutil.copytree(workdir / "params", only_params / "params")
    rc, out, err = _evaluate(capsys, "--config", config, "--workdir", str(only_params))
    assert rc == 0 and _metrics(out) == final, err[-3000:]


def test_a_workdir_alone_uses_its_saved_config(run, capsys):
    """Without --config the run's own resolved config (WORKDIR/config.json, overrides included) is used."""
    _, workdir, final = run
    rc, out, err = _evaluate(capsys, "--workdir", str(workdir))
    assert rc == 0 and _metrics(out) == final, err[-3000:]
    rc, out, err = _evaluate(capsys, "--workdir", str(workdir), "--evals", "zeroshot",
                             "--config.evals.zeroshot.num_examples=20")
    assert rc == 0 and sorted(_metrics(out)) == sorted(k for k in final if k.startswith("eval/zeroshot/")), err


def test_evals_picks_some_and_overrides_apply(run, capsys):
    config, workdir, final = run
    rc, out, err = _evaluate(capsys, "--config", config, "--params", str(workdir / "params"), "--evals", "zeroshot",
                             "--config.evals.zeroshot.num_examples=20")
    assert rc == 0, err[-3000:]
    got = _metrics(out)
    assert sorted(got) == sorted(k for k in final if k.startswith("eval/zeroshot/"))
    assert got["eval/zeroshot/chance"] == final["eval/zeroshot/chance"]


def test_progress_and_table_leave_the_metrics_alone(run, capsys, tmp_path):
    """``--progress log`` reports every pass (batches / total, examples/s) and ``--format table`` prints the
    metrics as a markdown table; the metrics are the trainer's own either way."""
    config, workdir, final = run
    rc, out, err = _evaluate(capsys, "--config", config, "--params", str(workdir / "params"), "--progress", "log",
                             "--format", "table", "--json", str(tmp_path / "m.json"))
    assert rc == 0, err[-3000:]
    assert _metrics((tmp_path / "m.json").read_text()) == final
    assert "eval retrieval (1/2): 3/3 batches, 40 examples" in err and "examples/s" in err, err[-3000:]
    assert "eval zeroshot (2/2): " in err
    table = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line.rsplit("|", 2)[1].strip()
             for line in out.splitlines()[2:]}
    assert table[("retrieval", "i2t_r1")] == f"{final['eval/retrieval/i2t_r1']:.4f}"
    assert {f"eval/{n}/{m}" for n, m in table if m != "seconds"} == set(final)
    with pytest.raises(SystemExit, match="--progress must be one of auto, bar, log, off"):
        main(["--config", config, "--params", str(workdir / "params"), "--progress", "loud"])


def test_clear_errors(run, capsys, tmp_path):
    config, workdir, _ = run
    params = str(workdir / "params")
    cases = [
        (["--config", config, "--params", params, "--evals", "retrievl"],
         "unknown evals ['retrievl']; the config's evals: retrieval, zeroshot"),
        (["--config", config + ":no_evals", "--params", params], "the config has no evals"),
        (["--config", config, "--params", str(tmp_path / "nowhere")], "--params: no directory"),
        (["--config", config, "--workdir", str(tmp_path)], "holds neither a committed checkpoint"),
        (["--params", params], "give --config, or --workdir of a run"),
    ]
    for args, message in cases:
        rc, out, err = _evaluate(capsys, *args)
        assert rc == 2 and message in err, (args, err[-2000:])
    for args, message in ((["--config", config], "give exactly one of --workdir, --params, --checkpoint, --hf"),
                          (["--config", config, "--params", params, "--hf", params], "(got --params, --hf)"),
                          (["--config", config, "--params", params, "--steps", "3"], "unknown argument '--steps'")):
        with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
            main(args)


def test_weights_missing_a_parameter_are_refused(run, capsys, tmp_path):
    """Evaluating with a parameter left at an unset (or random) value would report meaningless numbers."""
    config, workdir, _ = run
    params = load_params(str(workdir / "params"))
    del params["logit_scale"]
    export_params(params, tmp_path / "partial")
    rc, out, err = _evaluate(capsys, "--config", config, "--params", str(tmp_path / "partial"))
    assert rc == 2 and "lack 1 parameters of the config's model" in err and "logit_scale" in err, err[-2000:]


@pytest.mark.slow
def test_two_processes_evaluate_like_one(run, tmp_path):
    """2 processes x 4 CPU devices (``launch/local.py``): each reads its half of the split in padded batches
    and the gathered metrics equal the 1-process x 8-device trainer evaluation."""
    import signal
    import subprocess
    import sys

    import portpicker

    from tests.helpers import trainer_env

    config, workdir, final = run
    out_json = tmp_path / "two.json"
    cmd = [sys.executable, "launch/local.py", "--num_processes", "2", "--cpu_devices", "4", "--timeout", "480",
           "--port", str(portpicker.pick_unused_port()), "--", sys.executable, "-m", "vlfm.evaluate",
           "--config", config, "--workdir", str(workdir), "--json", str(out_json)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out = proc.communicate(timeout=500)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # JAX's preemption handler catches SIGTERM
        out = proc.communicate()[0]
        raise AssertionError(f"2-process evaluation did not finish:\n{out[-4000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    assert "all 2 processes finished" in out and "[p1] " in out, out[-4000:]
    got = _metrics(out_json.read_text())  # chance_r1 = 1 / rows: every row counted once
    assert got.keys() == final.keys()
    for key, value in final.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
