"""tfwd's layer-name conventions, without TensorFlow: tap kinds and stages.

tfwd models name their layers `stem_*`, `stage{s}_block{b}_*`, `pool` and `logits`
(see tfwd.models.taps). The functions here read only those names, so `tfwd.plots` and
the binaries' flag definitions use them without loading TensorFlow; `tfwd.models`
re-exports every name.

Example:
    >>> stage_boundaries(["stem_relu", "stage1_block1_out", "stage2_block1_out", "logits"])
    [1, 2, 3]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

TAP_KINDS = ("all", "blocks", "residual")
PATTERN_PREFIX = "re:"
STAGE_PATTERN = re.compile(r"^stage(\d+)_block(\d+)_")


def stage_of(name: str) -> int:
    """The stage a layer belongs to: 0 for the stem (and input), s for stage{s}_*, -1 for the head."""
    match = STAGE_PATTERN.match(name)
    if match:
        return int(match.group(1))
    return 0 if name.startswith("stem") or name == "images" else -1


def stage_boundaries(names: Sequence[str]) -> list[int]:
    """Indices i where names[i] starts a new stage (for marking heatmaps and plots)."""
    stages = [stage_of(n) for n in names]
    return [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
