"""Deprecated alias: tfwd.dominant is now tfwd.dominant_datapoints; the old name will be removed.

The module was renamed to match bin/dominant_datapoints and its output folder (RUN/dominant_datapoints).
Importing this alias warns once (DeprecationWarning) and gives tfwd.dominant_datapoints itself,
private names included.
"""

import tfwd

tfwd._renamed_module("dominant", stacklevel=2)  # the warning points at the importing line
