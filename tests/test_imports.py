"""`training` and `serving` import on their own: neither pulls the other's heavy stack, nor the other half."""

import subprocess
import sys

import pytest

CHECK = """
import importlib, pkgutil, sys
import {pkg}
for m in pkgutil.walk_packages({pkg}.__path__, "{pkg}."):
    importlib.import_module(m.name)
bad = sorted(k for k in sys.modules if k.split(".")[0] in {forbidden!r})
assert not bad, "importing {pkg} loaded " + ", ".join(bad[:5])
print("ok", len([k for k in sys.modules if k.startswith("{pkg}")]))
"""


@pytest.mark.parametrize(
    "pkg, forbidden",
    [
        ("training", {"vllm", "ray", "serving"}),
        # the vLLM / Ray glue modules under serving may import those; nothing under serving imports deepspeed
        ("serving", {"deepspeed", "training"}),
        # common is numpy only; the profiler imports torch inside its functions
        ("common", {"deepspeed", "vllm", "ray", "training", "serving", "torch"}),
    ],
)
def test_import_isolation(pkg, forbidden):
    code = CHECK.format(pkg=pkg, forbidden=forbidden)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
