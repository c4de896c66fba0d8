"""Deprecated alias: tfwd.pruning is now tfwd.prune_blocks; the old name will be removed.

The module was renamed to match bin/prune_blocks and its output folder (RUN/prune_blocks).
Importing this alias warns once (DeprecationWarning) and gives tfwd.prune_blocks itself,
private names included.
"""

import tfwd

tfwd._renamed_module("pruning", stacklevel=2)  # the warning points at the importing line
