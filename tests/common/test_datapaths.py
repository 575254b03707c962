"""Which data directory a run uses (and what its errors say), and ensure_files: real, fetched or synthetic files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from common import datapaths as dp
from common import synthetic
from common.datapaths import ENV_VAR, DirOrigin, Fallback, Source
from common.traces import load_azure_trace, load_expert_trace
from tests.common import mirror


@pytest.fixture()
def checkout(tmp_path, monkeypatch):
    """A fake checkout at tmp/repo, so the ../shared/data default can be made to exist or not."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(dp, "REPO_ROOT", repo)
    return repo


def test_explicit_data_dir_wins_over_the_environment(checkout):
    (checkout.parent / "shared" / "data").mkdir(parents=True)
    d = dp.locate_data_dir("/real/dir", {ENV_VAR: "/nonexistent"})
    assert (d.path, d.origin) == (Path("/real/dir"), DirOrigin.config)
    assert dp.resolve_data_dir("/real/dir", {ENV_VAR: "/nonexistent"}) == Path("/real/dir")


def test_precedence_below_the_config(checkout):
    assert dp.locate_data_dir(None, {ENV_VAR: "/from/env"}) == dp.DataDir(Path("/from/env"), DirOrigin.env)
    assert dp.locate_data_dir(None, {ENV_VAR: ""}) == dp.DataDir(checkout / "data", DirOrigin.local)  # empty: unset
    assert dp.locate_data_dir(None, {}) == dp.DataDir(checkout / "data", DirOrigin.local)
    shared = checkout.parent / "shared" / "data"
    shared.mkdir(parents=True)
    assert dp.locate_data_dir(None, None) == dp.DataDir(shared, DirOrigin.shared)
    assert dp.locate_data_dir(None, {ENV_VAR: "/from/env"}).origin is DirOrigin.env


@pytest.mark.parametrize(
    "configured, env, says",
    [
        ("{tmp}/cfg", {ENV_VAR: "/nonexistent"}, ["set by paths.data_dir", "point paths.data_dir at",
                                                  "LOADWISE_DATA_DIR={tmp}/cfg make data"]),
        (None, {ENV_VAR: "{tmp}/env"}, ["set by $LOADWISE_DATA_DIR", "fix or unset $LOADWISE_DATA_DIR",
                                        "paths.data_dir=DIR (it wins over the variable)", "`make data`"]),
        (None, {}, ["the default ./data in the checkout", "pass paths.data_dir=DIR", "`make data`"]),
    ],
    ids=["config", "env", "default"],
)
def test_missing_file_names_where_the_directory_came_from(checkout, tmp_path, configured, env, says):
    configured = configured and configured.format(tmp=tmp_path)
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    d = dp.locate_data_dir(configured, env)
    with pytest.raises(FileNotFoundError) as err:
        dp.data_file(d, "x/f.csv")
    msg = str(err.value)
    assert msg.startswith(f"data file {d.path / 'x/f.csv'} not found") and "\n" not in msg
    for s in says:
        assert s.format(tmp=tmp_path) in msg
    if configured:
        assert "/nonexistent" not in msg  # the ignored variable is not blamed
    with pytest.raises(FileNotFoundError) as err:
        dp.ensure_files(d, ["x/f.csv"], Fallback.none)
    assert str(err.value) == msg


# ---------------------------------------------------------------------------------------------------------------------
# ensure_files
# ---------------------------------------------------------------------------------------------------------------------


def _cfg_dir(path: Path) -> dp.DataDir:
    return dp.DataDir(path, DirOrigin.config)


def test_present_files_are_used_as_they_are(synthetic_dir, caplog):
    names = [synthetic.EXPERT_NPZ, synthetic.AZURE_CONV]
    files = dp.ensure_files(_cfg_dir(synthetic_dir), names, Fallback.synthetic, base=mirror.closed_port_url())
    assert files.root == synthetic_dir and files.source is Source.real
    assert files.sources == {n: Source.real for n in names}
    assert files.path(names[0]) == synthetic_dir / names[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_download_fetches_the_missing_files(tmp_path):
    content = b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0000000,5,7\n"
    root = tmp_path / "mirror"
    (entry,) = mirror.build_mirror(root, {"azure/t.csv": content})
    data = tmp_path / "data"
    with mirror.Mirror(root) as m:
        files = dp.ensure_files(_cfg_dir(data), ["azure/t.csv"], Fallback.download, manifest=[entry], base=m.url)
    assert files.sources == {"azure/t.csv": Source.downloaded} and files.source is Source.downloaded
    assert files.root == data and (data / "azure/t.csv").read_bytes() == content
    assert files.summary()["files"]["azure/t.csv"] == {"path": str(data / "azure/t.csv"), "source": "downloaded"}


def test_download_that_fails_is_an_error(tmp_path):
    entries = mirror.build_mirror(tmp_path / "mirror", {"azure/t.csv": b"x"})
    with pytest.raises(FileNotFoundError, match="did not answer") as err:
        dp.ensure_files(_cfg_dir(tmp_path / "data"), ["azure/t.csv"], Fallback.download, manifest=entries,
                        base=mirror.closed_port_url())
    assert "azure/t.csv" in str(err.value) and "make data" in str(err.value)


def test_synthetic_stands_in_loudly_and_keeps_the_real_files(tmp_path, caplog):
    data, stand = tmp_path / "data", tmp_path / "out" / "synthetic_data"
    real = synthetic.write_azure_csv(synthetic.synthetic_request_trace(50, seed=9)[0], data / synthetic.AZURE_CONV)
    names = [synthetic.EXPERT_NPZ, synthetic.AZURE_CONV]
    with caplog.at_level(logging.WARNING, logger="common.datapaths"):
        files = dp.ensure_files(_cfg_dir(data), names, Fallback.synthetic, synthetic_dir=stand,
                                base=mirror.closed_port_url())
    assert files.root == stand and files.source is Source.synthetic
    assert files.sources == {synthetic.EXPERT_NPZ: Source.synthetic, synthetic.AZURE_CONV: Source.real}
    assert files.path(synthetic.AZURE_CONV).resolve() == real.resolve()  # the real file, seen from the stand-in root
    assert len(load_azure_trace(files.path(synthetic.AZURE_CONV))) == 50
    trace = load_expert_trace(files.path(synthetic.EXPERT_NPZ))
    s = synthetic.SMARTMOE_LIKE
    assert trace.counts.shape == (s.num_iterations, s.num_ranks, s.num_layers, s.num_microbatches, s.num_experts)
    assert not (data / synthetic.EXPERT_NPZ).exists()  # nothing made up lands in the data directory
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    for s in ("SYNTHETIC DATA", synthetic.EXPERT_NPZ, str(stand), "did not answer", f"{ENV_VAR}={data} make data"):
        assert s in text
    assert synthetic.AZURE_CONV not in text.split("missing real file(s):")[1].split("\n")[0]
    assert "SYNTHETIC" in files.describe() and files.summary()["source"] == "synthetic"


def test_synthetic_stand_ins_are_deterministic(tmp_path):
    a = dp.ensure_files(_cfg_dir(tmp_path / "d"), [synthetic.EXPERT_NPZ], Fallback.synthetic,
                        synthetic_dir=tmp_path / "a", base=mirror.closed_port_url(), seed=3)
    b = dp.ensure_files(_cfg_dir(tmp_path / "d"), [synthetic.EXPERT_NPZ], Fallback.synthetic,
                        synthetic_dir=tmp_path / "b", base=mirror.closed_port_url(), seed=3)
    np.testing.assert_array_equal(load_expert_trace(a.path(synthetic.EXPERT_NPZ)).counts,
                                  load_expert_trace(b.path(synthetic.EXPERT_NPZ)).counts)


def test_synthetic_cannot_invent_every_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no synthetic stand-in"):
        dp.ensure_files(_cfg_dir(tmp_path / "d"), ["laer_moe_paper_results/planner_results_backup.csv"],
                        Fallback.synthetic, synthetic_dir=tmp_path / "s", base=mirror.closed_port_url())
    with pytest.raises(ValueError, match="must not be the data directory"):
        dp.ensure_files(_cfg_dir(tmp_path / "d"), [synthetic.EXPERT_NPZ], Fallback.synthetic,
                        synthetic_dir=tmp_path / "d", base=mirror.closed_port_url())


def test_absolute_names_are_left_where_they_are(tmp_path):
    real = synthetic.write_azure_csv(synthetic.synthetic_request_trace(20)[0], tmp_path / "elsewhere" / "t.csv")
    files = dp.ensure_files(_cfg_dir(tmp_path / "d"), [str(real), synthetic.EXPERT_NPZ], Fallback.synthetic,
                            synthetic_dir=tmp_path / "s", base=mirror.closed_port_url())
    assert files.path(str(real)) == real and real.is_file() and not real.is_symlink()
    assert files.sources[str(real)] is Source.real
