"""Test session set-up: 8 virtual CPU devices, parsed absl flags, a private dataset cache."""

import os
import sys
import tempfile

# Must happen before jax initialises its backend (imports below may import jax).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("VLFM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "vlfm-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain reads absl flags; tests do not run under absl.app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests import torchvision_cpu  # noqa: E402

torchvision_cpu.install()  # before anything imports transformers, timm or open_clip
