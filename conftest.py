"""Repository root conftest: runs from a checkout find the sanitized MBPP copy next to it.

`../shared/data/sanitized-mbpp.json` is this project's local copy of the official file; it is
never committed. Elsewhere, pass --mbpp-data or let the loader download and verify it.
"""

import os
from pathlib import Path

_SHARED_MBPP = Path(__file__).resolve().parent.parent / "shared" / "data" / "sanitized-mbpp.json"

if "CODEGEN_MBPP_DATA" not in os.environ and _SHARED_MBPP.is_file():
    os.environ["CODEGEN_MBPP_DATA"] = str(_SHARED_MBPP)
