import json

import pytest

from common import profiling
from common.costmodel import ComputeModel
from common.topology import PROFILE_DIR, local_cpu


def test_quick_profile_loads_back(tmp_path):
    out = tmp_path / "prof.json"
    profiling.main(["--quick", "--out", str(out)])
    prof = json.loads(out.read_text())
    assert [r["m"] for r in prof["matmul"]] == list(profiling.QUICK.matmul)
    assert all(r["flops_per_s"] > 0 for r in prof["matmul"])
    assert len(prof["alltoall"]) == len(profiling.QUICK.alltoall_kb)
    cluster = local_cpu(out)
    assert cluster.num_devices == 2 and cluster.intra_bw == pytest.approx(prof["summary"]["alltoall_bw"])
    model = ComputeModel.from_profile(out)
    big = prof["matmul"][-1]
    assert model.time(big["flops"]) == pytest.approx(big["seconds"])


def test_fit_alpha_beta_recovers_line():
    rows = [{"world": 2, "bytes_per_peer": b, "seconds": 1e-4 + b / 2e9} for b in (1e3, 1e5, 1e7)]
    bw, lat = profiling.fit_alpha_beta(rows)
    assert bw == pytest.approx(2e9, rel=1e-6) and lat == pytest.approx(1e-4, rel=1e-6)


def test_committed_profile_loads():
    assert local_cpu(PROFILE_DIR / "local_cpu.json").device.peak_flops > 0
    assert ComputeModel.from_profile(PROFILE_DIR / "local_cpu.json").flops_points


def test_bad_profiles_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        local_cpu(bad)
    bad.write_text(json.dumps({"device": {}}))
    with pytest.raises(ValueError, match="bad.json"):
        ComputeModel.from_profile(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        local_cpu(tmp_path / "missing.json")


def test_default_out_is_the_current_directory_not_the_committed_profile(tmp_path, monkeypatch):
    committed = PROFILE_DIR / "local_cpu.json"
    before = committed.read_bytes()
    monkeypatch.chdir(tmp_path)
    profiling.main(["--quick", "--no-alltoall"])
    assert json.loads((tmp_path / "profile_cpu.json").read_text())["matmul"]
    assert committed.read_bytes() == before


def test_cuda_without_cuda_is_one_line(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        profiling.main(["--device", "cuda", "--quick", "--out", "unused.json"])
    msg = str(exc.value.code)
    assert exc.value.code != 0 and msg.startswith("error: --device cuda") and "\n" not in msg
