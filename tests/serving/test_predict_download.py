"""The week-long Azure 2024 traces (day-scale patterns for the predictor) are an optional, listed download of
scripts/download_data.py, never part of the default set."""

import hashlib
import importlib.util

from common import datasets
from common.datapaths import REPO_ROOT
from tests.common import mirror


def _script():
    spec = importlib.util.spec_from_file_location("download_data", REPO_ROOT / "scripts" / "download_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_azure_2024_is_listed_not_default(tmp_path, capsys):
    mod = _script()
    files = mod.OPTIONAL["azure_llm_2024"]
    assert {f.path.rsplit("/", 1)[1] for f in files} == {"AzureLLMInferenceTrace_code_1week.csv",
                                                         "AzureLLMInferenceTrace_conv_1week.csv"}
    assert not {f.path for f in files} & {e.path for e in datasets.MANIFEST}  # `make data` does not fetch them
    assert mod.main(["--data-dir", str(tmp_path), "--list-optional"], {}) == 0
    out = capsys.readouterr().out
    assert all(f.url in out for f in files) and "--optional azure_llm_2024" in out
    assert not any(tmp_path.iterdir())  # listing fetches nothing


def test_fetch_optional_over_http(tmp_path):
    mod = _script()
    body = b"TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.000000,10,2\n"
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "t.csv").write_bytes(body)
    data = tmp_path / "data"
    lines = []
    with mirror.Mirror(tmp_path / "up") as m:
        files = (mod.OptionalFile("azure_llm_inference_2024/t.csv", f"{m.url}/t.csv", "CC-BY-4.0"),
                 mod.OptionalFile("azure_llm_inference_2024/gone.csv", f"{m.url}/gone.csv", "CC-BY-4.0"))
        problems = mod.fetch_optional(data, files, log=lines.append)
    assert (data / "azure_llm_inference_2024" / "t.csv").read_bytes() == body
    assert len(problems) == 1 and problems[0].startswith("azure_llm_inference_2024/gone.csv")
    assert any(hashlib.sha256(body).hexdigest() in ln for ln in lines)
