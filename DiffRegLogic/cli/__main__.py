"""``python -m DiffRegLogic.cli ...``: the ``diffreg`` command without the console script (as in version 0.1)."""

import sys

from .app import main

if __name__ == "__main__":  # pragma: no cover - the import alone (documentation, module walks) runs nothing
    sys.exit(main())
