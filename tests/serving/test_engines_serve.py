"""`experiment=oserve/serve` end to end (slow: real engines): a bounded run with the load generator and a live
switch stops by itself; Ctrl-C stops a serving run; neither leaves a process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import synthetic

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def launch(tmp_path, *overrides):
    data = synthetic.write_synthetic_data_dir(tmp_path / "data", seed=0)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "experiments.run", "experiment=oserve/serve", f"paths.data_dir={data}",
           f"hydra.run.dir={tmp_path / 'run'}", "serve.port=0", "serve.engine.max_model_len=512", *overrides]
    # A session of its own: every process the run starts (Ray's too) is in its process group, which the test
    # checks is empty afterwards.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def group_left(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def finish(proc, timeout):
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if group_left(proc.pid):  # clean up what the run left, then fail below
            time.sleep(5)
            if group_left(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("processes of the run outlived it")
    return out


def test_bounded_run_with_load_and_switch_stops_by_itself(tmp_path):
    proc = launch(tmp_path, "serve.loadgen.num_requests=16", "serve.loadgen.time_scale=20", "serve.switch_after_s=2",
                  "serve.switch_to=[{tp:1,devices:[0],dispatch:[1,0]},{tp:1,devices:[5],dispatch:[0,1]}]",
                  "serve.num_cpus=3")
    out = finish(proc, timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "loadwise router: http://127.0.0.1:" in out
    res = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert res["load"]["answered"] == 16 and res["load"]["errors"] == 0
    assert len(res["switch"]["started"]) == 1 and len(res["switch"]["stopped"]) == 1
    assert (tmp_path / "run" / "requests.csv").exists()


def test_ctrl_c_stops_everything(tmp_path):
    proc = launch(tmp_path)
    t0 = time.monotonic()
    lines = []
    for line in proc.stdout:  # wait for the URL: replicas up, router listening
        lines.append(line)
        if "loadwise router:" in line or time.monotonic() - t0 > 600:
            break
    assert any("loadwise router:" in ln for ln in lines), "".join(lines)[-3000:]
    proc.send_signal(signal.SIGINT)
    out = finish(proc, timeout=120)
    res = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert res["stopped"] == "interrupted", out[-2000:]
