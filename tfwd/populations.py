"""Deprecated alias: tfwd.populations is now tfwd.compare_predictions; the old name will be removed.

The module was renamed to match bin/compare_predictions and the kind of folder it writes.
Importing this alias warns once (DeprecationWarning) and gives tfwd.compare_predictions itself,
private names included.
"""

import tfwd

tfwd._renamed_module("populations", stacklevel=2)  # the warning points at the importing line
