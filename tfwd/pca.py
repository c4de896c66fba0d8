"""Deprecated alias: tfwd.pca is now tfwd.pc; the old name will be removed.

The module was renamed to match bin/pc and its output folders (RUN/pc_<taps>_<split>).
Importing this alias warns once (DeprecationWarning) and gives tfwd.pc itself,
private names included.
"""

import tfwd

tfwd._renamed_module("pca", stacklevel=2)  # the warning points at the importing line
