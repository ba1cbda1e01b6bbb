"""Per-dataset mixing counts kept in grain iterator states: written by ``vlfm.data.mixing``'s streams,
read by ``vlfm.data.pipeline.pipeline_stats`` (here, below both, so neither imports the other)."""

from __future__ import annotations

from typing import Any

from vlfm.data.bad_data import states_under

MIX_KEY = "vlfm_mix_counts"


def mix_counts(state: Any) -> dict[str, int]:
    """Dataset name -> examples drawn, summed over every ``MixStream`` in a (nested) iterator state."""
    total: dict[str, int] = {}
    for value in states_under(state, MIX_KEY):
        for name, n in zip(value["names"], value["counts"]):
            total[name] = total.get(name, 0) + int(n)
    return total
