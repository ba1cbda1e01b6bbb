"""Exact resume: a run stopped at a random step and resumed from its orbax checkpoint consumes exactly
the batches an uninterrupted run would (batch hashes), for streams, TFDS-like map sources, mixtures
and worker processes, including a SIGKILLed process."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vlfm.data import build_dataset, synthetic, train_iterator
from vlfm.data.mixing import per_step_iterator
from vlfm.data.webdataset import write_shards
from vlfm.core.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = {"w": np.zeros(3, np.float32)}


def batch_hash(batch) -> str:
    if isinstance(batch, tuple):  # (dataset name, batch) from a per-step mixture
        return batch[0] + ":" + batch_hash(batch[1])
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(np.ascontiguousarray(batch[key]).tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two webdataset corpora (one with a corrupt image) and a text corpus."""
    root = tmp_path_factory.mktemp("resume")
    synthetic.write_webdataset(root / "a", 48, 8, size=24, prefix="a")
    samples = [synthetic.sample(i, 24) for i in range(100, 130)]
    samples[5]["jpg"] = b"corrupt"
    write_shards(samples, str(root / "b" / "b-%05d.tar"), 6)
    synthetic.write_text_files(root / "t", 60, 15)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "and", "picture", "number"]
                               + list(synthetic.COLOURS)) + "\n")
    return str(root)


def wds_config(root, part, **kw):
    return dict(name="webdataset", urls=os.path.join(root, part, f"{part}-*.tar"),
                image=dict(size=16, flip=True, scale=(0.3, 1.0)), shuffle_buffer=16, cycle_length=2,
                text=dict(tokenizer=dict(kind="wordpiece", path=os.path.join(root, "vocab.txt")), max_len=8), **kw)


def mixture_config(root):
    return dict(name="mixture", sampling="weighted",
                datasets=dict(a=dict(wds_config(root, "a"), weight=2.0), b=dict(wds_config(root, "b"), weight=1.0)))


def make_iterator(kind, root, num_workers):
    if kind == "mixture":
        return train_iterator(build_dataset(mixture_config(root), "train"), global_batch_size=6, seed=3,
                              num_workers=num_workers, process_index=0, process_count=1)
    if kind == "shapes":
        bundle = build_dataset(dict(name="shapes", num_examples=40, image_size=8, max_len=8, mlm_prob=0.2), "train")
        return train_iterator(bundle, global_batch_size=6, seed=3, num_workers=num_workers, process_index=0,
                              process_count=1)
    text = dict(name="text_files", paths=os.path.join(root, "t", "*.txt"), shuffle_buffer=8,
                text=dict(tokenizer=dict(kind="wordpiece", path=os.path.join(root, "vocab.txt")), max_len=8,
                          mlm_prob=0.15, whole_word=True))
    return per_step_iterator(dict(pairs=dict(wds_config(root, "a"), batch_size=4, weight=1.0),
                                  text=dict(text, batch_size=5, weight=1.0)),
                             seed=3, num_workers=num_workers, process_index=0, process_count=1)


def _resume_matches(kind, root, tmp_path, num_workers, stops=(None,), total=12):
    """Resumes from each stop (None: a random step, reported on failure) and compares all batches."""
    full = make_iterator(kind, root, num_workers)
    expected = [batch_hash(next(full)) for _ in range(total)]
    full.close()
    for i, stop in enumerate(stops):
        stop = int(np.random.default_rng().integers(1, total)) if stop is None else stop
        it = make_iterator(kind, root, num_workers)
        got = [batch_hash(next(it)) for _ in range(stop)]
        stats_at_stop = it.stats()
        ckpt = Checkpointer(tmp_path / f"ckpt{i}", save_every=1, handle_sigterm=False)
        try:
            ckpt.save(stop, STATE, data_iterator=it)
            ckpt.wait()
            it.close()  # the "killed" run's iterator and workers are gone
            del it
            resumed = make_iterator(kind, root, num_workers)
            ckpt.restore({"w": STATE["w"]}, data_iterator=resumed)
        finally:
            ckpt.close()
        assert resumed.stats() == stats_at_stop
        got += [batch_hash(next(resumed)) for _ in range(total - stop)]
        resumed.close()
        assert got == expected, f"{kind}, {num_workers} workers, stopped after {stop} batches"
    assert len(set(expected)) == total  # the batches really differ


@pytest.mark.parametrize("kind", ["mixture", "per_step", "shapes"])
def test_exact_resume_in_process(corpus, tmp_path, kind):
    _resume_matches(kind, corpus, tmp_path, num_workers=0)


@pytest.mark.slow
def test_exact_resume_with_worker_processes(corpus, tmp_path):
    # After one batch the second worker has delivered nothing yet: its saved state is grain's initial one.
    _resume_matches("mixture", corpus, tmp_path, num_workers=2, stops=(1, None))


def test_resume_with_another_worker_count_is_refused(corpus, tmp_path):
    it = make_iterator("shapes", corpus, 0)
    next(it)
    state = it.get_state()
    other = make_iterator("shapes", corpus, 0)
    other.num_workers = 2  # as if this run had data.num_workers=2
    with pytest.raises(ValueError, match="num_workers"):
        other.set_state(state)


SCRIPT = r'''
import json, os, sys
sys.path.insert(0, {repo!r})
from absl import flags
flags.FLAGS.mark_as_parsed()
import numpy as np
from tests.test_data_resume import STATE, batch_hash, make_iterator
from vlfm.core.checkpoint import Checkpointer


def main():
    root, workdir, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    it = make_iterator("mixture", root, 2)
    ckpt = Checkpointer(os.path.join(workdir, "ckpt"), save_every=1, handle_sigterm=False)
    start = 0
    if ckpt.latest_step() is not None:
        ckpt.restore({{"w": STATE["w"]}}, data_iterator=it)
        start = ckpt.latest_step()
    with open(os.path.join(workdir, "hashes.txt"), "a") as log:
        for step in range(start, total):
            log.write(f"{{step}} {{batch_hash(next(it))}}\n")
            log.flush()
            ckpt.save(step + 1, STATE, data_iterator=it)
    ckpt.close()
    it.close()


if __name__ == "__main__":
    main()
'''


@pytest.mark.slow
def test_sigkilled_run_resumes_exactly(corpus, tmp_path):
    """A process with 2 data workers is SIGKILLed at a random step (no clean shutdown, maybe mid-save);
    rerunning it resumes from the last committed checkpoint and every step's batch matches."""
    total = 14
    full = make_iterator("mixture", corpus, 2)
    expected = [batch_hash(next(full)) for _ in range(total)]
    full.close()
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(repo=REPO))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    kill_after = int(np.random.default_rng().integers(2, total - 2))
    log = tmp_path / "hashes.txt"
    proc = subprocess.Popen([sys.executable, str(script), corpus, str(tmp_path), str(total)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (log.exists() and len(log.read_text().splitlines()) >= kill_after):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run did not reach the kill step"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its grain workers, at once
    finally:
        proc.wait(timeout=60)
    killed_at = len(log.read_text().splitlines())
    out = subprocess.run([sys.executable, str(script), corpus, str(tmp_path), str(total)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert {int(s) for s, _ in lines} == set(range(total))
    for step, digest in lines:  # steps replayed after the restore point must match too
        assert digest == expected[int(step)], (step, f"killed after {killed_at} logged steps")
