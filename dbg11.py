import os, sys
from common.launch import run_local
from tests.training.trainer_cases import run_cases
def go(cases, n=2):
    res = run_local(run_cases, n, "gloo", args=(cases, "/tmp/t11dbg", 4), env={"TORCH_EXTENSIONS_DIR": "/work/main/.venv/torch_extensions"}, timeout_s=900)
    for r, x in enumerate(res):
        for k, v in x.items():
            if k != "_ctx": print(r, k, "OK" if v is None else v[-1500:])
