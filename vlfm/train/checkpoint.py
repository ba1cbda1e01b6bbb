"""Checkpoint I/O lives in ``vlfm.core.checkpoint``; this name stays for callers outside the package that
still import it (the HF fusion parity tests, which must stay unchanged)."""

from vlfm.core.checkpoint import Checkpointer, export_params, load_params, load_params_from_checkpoint  # noqa: F401
