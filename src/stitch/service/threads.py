"""How the service's compute threads wait between parallel regions.

PyTorch's OpenMP threads spin after each parallel region by default. That is fastest for one process
alone, but a service shares its cores with its own event loop (and, on a small machine, with its clients):
spinning threads take the cycles those need. With passive waiting the loaded PyTorch MiniLM service on the
2-core benchmark machine served 229 req/s instead of 201 (p50 86 vs 97 ms, 20 in flight), although the
encoder alone is slower that way (327 vs 393 texts/s). OpenMP reads the setting once, when torch loads.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_waiting() -> bool:
    """Ask OpenMP to let idle threads sleep, unless the user chose a policy; False when torch (and so
    OpenMP) is already loaded, as the setting would not take effect."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
