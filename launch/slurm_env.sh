# Environment for vlfm on SLURM GPU clusters; sourced by launch/slurm.sbatch (or by hand before srun).
#
# Process layout: vlfm.train.distributed reads SLURM_* itself (coordinator = first node of the step,
# process count and id from SLURM_NTASKS / SLURM_PROCID) and picks each task's GPUs: all of the
# node's GPUs with one task per node, GPU SLURM_LOCALID with one task per GPU.
# Nothing here is specific to one cluster; network settings (NCCL_IB_*, NCCL_SOCKET_IFNAME) belong
# to the cluster's own documentation.

# XLA on GPUs. These are the usual multi-GPU settings for data-parallel / FSDP transformer training
# (collectives overlapped with compute, combined into large transfers, pipelined across scanned
# layers). They are not measured in this repository yet: compare with and without them using
# benchmarks/train_step.py on your hardware and record the result in benchmarks/RESULTS.md.
#   latency hiding scheduler      schedules async collectives to overlap with compute
#   highest priority async stream collectives do not wait behind compute kernels
#   *_combine_threshold_bytes     fuse small all-reduce / all-gather / reduce-scatter into 128 MiB ones
#   pipelined_*                   prefetch the next scanned layer's FSDP all-gather / reduce-scatter
export XLA_FLAGS="${XLA_FLAGS:-} \
--xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_highest_priority_async_stream=true \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728 \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 \
--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728 \
--xla_gpu_enable_pipelined_all_gather=true \
--xla_gpu_enable_pipelined_reduce_scatter=true \
--xla_gpu_enable_pipelined_all_reduce=true"

# JAX preallocates 75% of GPU memory by default; training wants most of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
# Compiled programs are cached across restarts of the same job (a shared directory).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${WORKDIR:-.}/jax_cache}"
# A dead task stops the others within this many seconds (vlfm.train.distributed).
export VLFM_HEARTBEAT_TIMEOUT="${VLFM_HEARTBEAT_TIMEOUT:-100}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export PYTHONUNBUFFERED=1
