"""Test-wide settings: everything offline, every cache in a temporary folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Set before any test module imports transformers / matplotlib / ray.
_SANDBOX = tempfile.mkdtemp(prefix="retrieval-tests-")
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_SANDBOX, "hf")
os.environ["MPLCONFIGDIR"] = os.path.join(_SANDBOX, "mpl")
os.environ["MPLBACKEND"] = "Agg"
os.environ["RAY_TMPDIR"] = os.path.join(_SANDBOX, "ray")
os.environ["RETRIEVAL_CACHE"] = os.path.join(_SANDBOX, "cache")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(_SANDBOX, "hypothesis")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster and deterministic
