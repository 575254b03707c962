"""Checkpoint files: a failed save never looks complete; a partial, corrupt or foreign checkpoint is a one-line
error naming the file or key. (Exact resume and re-sharding: tests/training/test_trainer.py.)"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import pytest

from common.launch import run_local

ENV = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))}


def _cases(rank: int, n: int, tmp: str) -> dict:
    """One process: every case, each an error message or None."""
    os.environ["LOCAL_RANK"] = str(rank)
    import shutil

    from tests.training.trainer_cases import make
    from training import checkpoint
    from training.checkpoint import CheckpointError
    from training.model import ModelConfig, MoEDecoder, lm_loss
    from training.trainer import Trainer

    root = Path(tmp)
    trainer, _ = make(None, 0, 1)
    good = checkpoint.save(root, trainer)
    out = {}

    def case(name):
        def wrap(fn):
            try:
                fn()
                out[name] = None
            except Exception:
                out[name] = traceback.format_exc()
        return wrap

    def expect(match, path):
        fresh, _ = make(None, 0, 1)
        try:
            checkpoint.load(path, fresh)
        except CheckpointError as err:
            assert match in str(err) and "\n" not in str(err), f"message {err!r} lacks {match!r}"
            return
        raise AssertionError(f"loading {path} did not fail")

    @case("failed_save_is_not_complete")
    def _():
        import torch.distributed.checkpoint as dcp

        real = dcp.FileSystemWriter
        trainer.step_count = 7

        class Broken(real):
            def write_data(self, plan, planner):
                raise OSError("disk full")

        dcp.FileSystemWriter = Broken
        try:
            checkpoint.save(root, trainer)
        except OSError as err:
            assert "disk full" in str(err), str(err)
        finally:
            dcp.FileSystemWriter, trainer.step_count = real, 0
        assert checkpoint.latest(root) == good, "a save that failed looks complete"
        assert not (root / "step_000007").exists()

    @case("partial_checkpoint_names_the_missing_file")
    def _():
        bad = root / "partial"
        shutil.copytree(good, bad)
        (bad / "__0_0.distcp").unlink()
        expect(f"{bad / '__0_0.distcp'} is missing", bad)
        (bad / ".metadata").unlink()
        expect(f"{bad / '.metadata'} is missing", bad)
        expect("has no meta.json", root / "nothing_here")

    @case("corrupt_checkpoint_names_the_file")
    def _():
        bad = root / "corrupt"
        shutil.copytree(good, bad)
        data = (bad / "__0_0.distcp").read_bytes()
        (bad / "__0_0.distcp").write_bytes(data[: len(data) // 2])
        expect(f"{bad / '__0_0.distcp'} is corrupt or truncated", bad)
        meta = (bad / ".metadata").read_bytes()
        (bad / ".metadata").write_bytes(meta[: len(meta) // 2])
        expect(f"{bad / '.metadata'} is corrupt or truncated", bad)
        (bad / "meta.json").write_text("{not json")
        expect("meta.json is corrupt", bad)

    @case("another_model_shape_names_the_key")
    def _():
        from tests.training.trainer_cases import CFG, trainer_cfg

        other = ModelConfig(**{**CFG.__dict__, "ffn": CFG.ffn * 2})
        fresh = Trainer(MoEDecoder(other), trainer_cfg(1), 4, lm_loss)
        try:
            checkpoint.load(good, fresh)
            raise AssertionError("a checkpoint of another model loaded")
        except CheckpointError as err:
            assert "model.ffn = 24 there, 48 here" in str(err), str(err)

    @case("bf16_at_stage_0_is_a_one_line_error")
    def _():
        from tests.training.trainer_cases import trainer_cfg
        from training.train_config import Precision

        tcfg = trainer_cfg(1)
        tcfg.precision = Precision.bf16
        bf16, _ = make(None, 0, 1, tcfg=tcfg)
        try:
            checkpoint.save(root / "bf16", bf16)
            raise AssertionError("saving DeepSpeed's FP16_Optimizer state did not fail")
        except CheckpointError as err:
            assert "trainer.zero_stage=1 or 2" in str(err) and "\n" not in str(err), str(err)

    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_local(_cases, 1, "gloo", args=(str(tmp_path_factory.mktemp("ckpt")),), env=ENV, timeout_s=600)[0]


@pytest.mark.parametrize("case", ["failed_save_is_not_complete", "partial_checkpoint_names_the_missing_file",
                                  "corrupt_checkpoint_names_the_file", "another_model_shape_names_the_key",
                                  "bf16_at_stage_0_is_a_one_line_error"])
def test_checkpoint_case(results, case):
    assert results[case] is None, results[case]
