"""How the service's compute threads wait between parallel regions.

PyTorch's OpenMP threads (and ONNX Runtime's pool) spin after each parallel region by default. That is
fastest for one process alone, but a service shares its cores with its own event loop (and, on a small
machine, with its clients): spinning threads take the cycles those need. Measured on the 2-core benchmark
machine, 20 requests in flight (`benchmarks/bench_serve.py`): the PyTorch MiniLM path served 225-249 req/s
instead of 201, the ONNX path ~400 instead of 195-241 and the static path 930-1,290 instead of 840-870,
although the encoder alone is slower that way. OpenMP reads the setting once, when torch loads; the ONNX
encoder reads it when it opens its session (:func:`stitch.encoders.onnx_text._session`).
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
