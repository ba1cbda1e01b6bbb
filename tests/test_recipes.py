"""The paper-size configs' recipes: every launch and evaluate command in a config's "Launch" and
"Evaluate" blocks, run through bash with the launchers' dry runs, gives a command line whose config
(file + overrides) loads and validates. Nothing is trained and no data is read."""

import ast
import os
import subprocess
import textwrap

import pytest

from tests.helpers import REPO
from vlfm.evaluate.__main__ import parse_args as evaluate_args
from vlfm.train.__main__ import parse_args as train_args
from vlfm.train.config import ConfigError, load_config

PAPER_CONFIGS = ("clip_b16", "vit_b16", "bert_base", "vilt_b32", "meter_clip16_roberta", "bridgetower_base",
                 "ufo_base")
# Stand-ins: `sbatch` runs the script itself (SLURM options dropped), `python` prints its arguments; the
# launchers print their commands (DRY_RUN=1); every printed command is re-read by bash into NUL-separated words.
STUBS = r'''
export DRY_RUN=1
sbatch() { while [[ "$1" == --* ]]; do shift; done; local script="$1"; shift; bash "$script" "$@"; }
python() { printf '%q ' python "$@"; echo; }
'''
PARSE = r'''
while IFS= read -r line; do
  case "$line" in
    *"gcloud compute tpus tpu-vm ssh"*|srun*|"python "*) eval "words=($line)"; printf '%s\0' "${words[@]}"; printf '\n\0';;
  esac
done
'''


def _block(doc: str, title: str) -> str:
    """The first indented block after the paragraph starting with ``title``."""
    lines = doc.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(title))
    while not lines[i].startswith("    "):
        i += 1
    block = []
    for line in lines[i:]:
        if line and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def _commands(name: str) -> list[list[str]]:
    with open(os.path.join(REPO, "configs", f"{name}.py")) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    script = STUBS + _block(doc, "Launch") + "\n" + _block(doc, "Evaluate")
    printed = subprocess.run(["bash", "-euc", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    words = subprocess.run(["bash", "-c", PARSE], input=printed.stdout, capture_output=True, text=True, timeout=60)
    assert words.returncode == 0, words.stderr
    commands = [c.strip("\0").split("\0") for c in words.stdout.split("\n\0") if c.strip("\0")]
    out = []
    for argv in commands:
        if argv[0] == "gcloud":  # the remote command of tpu_pod.sh run, read by the worker's shell
            remote = next(a[len("--command="):] for a in argv if a.startswith("--command="))
            trainer = "python " + remote.split("python ", 1)[1].split(" > ", 1)[0]  # without its redirections
            inner = subprocess.run(["bash", "-c", PARSE], input=trainer + "\n", capture_output=True, text=True,
                                   timeout=60).stdout
            argv = inner.strip("\0\n").split("\0")
        out.append(argv[argv.index("-m"):])
    return out


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_recipe_commands_give_configs_that_load(name):
    commands = _commands(name)
    kinds = sorted({argv[1] for argv in commands})
    assert kinds == ["vlfm.evaluate", "vlfm.train"], commands
    assert len([a for a in commands if a[1] == "vlfm.train"]) >= 2, "a TPU and a SLURM launch"
    runs = {}  # workdir -> (config file, overrides) of the launches: what `--workdir` evaluation reads back
    for argv in commands:
        if argv[1] == "vlfm.train":
            config, workdir, overrides, _, _ = train_args(argv[2:])
            load_config(config, overrides)
            runs[workdir] = (config, overrides)
    for argv in commands:
        if argv[1] == "vlfm.evaluate":
            args = evaluate_args(argv[2:])
            assert args["weights"][0] == "workdir" and args["weights"][1] in runs, (argv, sorted(runs))
            config, overrides = runs[args["weights"][1]]
            config = load_config(args.get("--config") or config, overrides + args["overrides"])
            assert config.evals, argv


def test_an_eval_may_read_a_task_data_by_name_and_a_bad_name_fails_at_load():
    """``data="task:NAME"`` (a multi-task run's evals) used to crash the schema check with an AttributeError."""
    config = os.path.join(REPO, "configs", "ufo_base.py")
    ok = load_config(config, ["evals={'mlm': {'type': 'mlm_accuracy', 'data': 'task:text'}}"])
    assert ok.evals.mlm.data == "task:text"
    with pytest.raises(ConfigError, match="evals.mlm.data: 'text' is neither a data config nor 'task:NAME'"):
        load_config(config, ["evals={'mlm': {'type': 'mlm_accuracy', 'data': 'text'}}"])
