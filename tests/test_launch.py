"""Dry runs of the cluster launchers: the commands they would run (no cluster is needed)."""

import os
import subprocess

from tests.helpers import REPO


def _dry(cmd, **env):
    out = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, DRY_RUN="1", **env), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_slurm_dry_run():
    out = _dry(["bash", "launch/slurm.sbatch", "--config.data.batch_size=1024"], CONFIG="configs/clip_b16.py",
               WORKDIR="/shared/w")
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out
    assert out.strip().splitlines()[-1] == ("srun --kill-on-bad-exit=1 --cpu-bind=none python -m vlfm.train --config "
                                            "configs/clip_b16.py --workdir /shared/w --config.data.batch_size=1024")


def test_tpu_pod_dry_runs():
    env = dict(TPU_NAME="t", ZONE="us-east5-a", ACCELERATOR="v5p-32", BUCKET="gs://b")
    queue = _dry(["bash", "launch/tpu_pod.sh", "queue"], **env)
    assert queue.strip() == ("gcloud compute tpus queued-resources create t-qr --node-id=t --zone=us-east5-a "
                             "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5")
    setup = _dry(["bash", "launch/tpu_pod.sh", "setup"], **env)
    assert "--worker=all" in setup and "gcsfuse --implicit-dirs b /mnt/vlfm" in setup and "jax[tpu]==" in setup
    run = _dry(["bash", "launch/tpu_pod.sh", "run", "configs/clip_b16.py", "x", "--config.mesh.shape=(1,-1,1)"], **env)
    assert run.startswith("gcloud compute tpus tpu-vm ssh t --zone=us-east5-a --worker=all '--command=")
    assert ("VLFM_DISTRIBUTED=1" in run and "--workdir /mnt/vlfm/workdirs/x" in run
            and "--config.mesh.shape=\\(1\\,-1\\,1\\)" in run)
