"""Optimizers, schedules and parameter-group transforms (all optax)."""

from vlfm.optim.optimizers import DEFAULT_NO_DECAY, build_optimizer, ema_update, path_mask
from vlfm.optim.schedules import build_schedule

__all__ = ["DEFAULT_NO_DECAY", "build_optimizer", "build_schedule", "ema_update", "path_mask"]
