"""Trace readers on a few real rows of each format, detection, windows and resampling.

Fixture rows, copied from the files in ../shared/traces (see its README):
- Azure LLM inference 2023, conv (Azure/AzurePublicDataset, CC-BY-4.0; Patel et al., "Splitwise",
  ISCA 2024): the first three rows;
- Mooncake FAST'25 conversation trace (kvcache-ai/Mooncake, Apache-2.0): rows with their
  ``hash_ids`` cut short (the reader does not use them);
- Azure Functions 2021 (Azure/AzurePublicDataset, CC-BY-4.0; Zhang et al., SOSP'21) through the
  vhive-serverless/invitro sample (MIT): the first three rows.
The Alibaba GenTD26 rows are for research use only, so that test reads them from ../shared/traces
and skips without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from torpor.sim.traces import TokenModel, TraceError, detect_format, load_trace, parse_trace, resample

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the clone (CI), or two levels up from a worktree of it
SHARED_TRACES = next((p / "shared" / "traces" for p in (ROOT.parent, ROOT.parent.parent)
                      if (p / "shared" / "traces").is_dir()), ROOT.parent / "shared" / "traces")

AZURE_LLM = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,55
"""
MOONCAKE = """{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1]}
{"timestamp": 0, "input_length": 7322, "output_length": 490, "hash_ids": [0, 14]}
{"timestamp": 3000, "input_length": 1000, "output_length": 100, "hash_ids": []}
"""
AZURE_FUNCTIONS = """app,func,end_timestamp,duration
7b2c43a2bc30f6bb438074df88b603d2cb982d3e7961de05270735055950a568,e3cdb48830f66eb8689cc0223514569a69812b77e6611e3d59814fac0747bd2f,0.07949090003967285,0.078
1573b95c039e51cc012b543a4af3bc7c3ee9485acbb0033ba5648b74969e0556,337cd24a7d5fd5c92460faee4ebe6a186a0eb322bd17b73da7ffa153025794e1,57.15786004066467,57.154
1573b95c039e51cc012b543a4af3bc7c3ee9485acbb0033ba5648b74969e0556,48cc770d590d3c5a7691b3b4e9302f82ec3be5ddc2a037d94ad2e76f44dd8946,59.13047790527344,59.125
"""
TORPOR = """timestamp_s,function,duration_ms
10.5,b,200
10.0,a,1500
12.0,a,500
"""


class TestReaders:
    def test_azure_llm(self) -> None:
        """Timestamps cut to microseconds and shifted to 0; tokens → seconds by the token model."""
        trace = parse_trace(AZURE_LLM, "conv.csv")
        assert trace.format == "azure_llm"
        fn = trace.functions["llm"]
        assert list(fn.arrivals_s) == pytest.approx([0.0, 4.314579, 4.541876])
        # 0.05 + 374 / 5000 + 44 / 50 = 1.0048
        assert fn.services_s[0] == pytest.approx(1.0048)
        assert "context / 5000" in trace.service_model

    def test_mooncake(self) -> None:
        """Milliseconds to seconds; the token model is the same one."""
        trace = parse_trace(MOONCAKE, "conversation_trace.jsonl", tokens=TokenModel(0, 1000, 100))
        assert trace.format == "mooncake"
        fn = trace.functions["llm"]
        assert list(fn.arrivals_s) == [0.0, 0.0, 3.0]
        assert fn.services_s[2] == pytest.approx(1000 / 1000 + 100 / 100)

    def test_azure_functions(self) -> None:
        """Arrival is end - duration; one function per app/func pair."""
        trace = parse_trace(AZURE_FUNCTIONS, "Azure2021_200.csv")
        assert trace.format == "azure_functions"
        assert sorted(trace.functions) == ["1573b95c-337cd24a", "1573b95c-48cc770d", "7b2c43a2-e3cdb488"]
        first = trace.functions["7b2c43a2-e3cdb488"]
        assert first.arrivals_s[0] == 0.0  # 0.0795 - 0.078 is the earliest arrival
        assert trace.functions["1573b95c-337cd24a"].arrivals_s[0] == pytest.approx(
            (57.15786004066467 - 57.154) - (0.07949090003967285 - 0.078))
        assert first.services_s[0] == pytest.approx(0.078)

    def test_torpor_csv_sorted_per_function(self) -> None:
        """Rows may come in any order; times start at the first request."""
        trace = parse_trace(TORPOR, "mine.csv")
        assert list(trace.functions["a"].arrivals_s) == [0.0, 2.0]
        assert list(trace.functions["a"].services_s) == [1.5, 0.5]
        assert list(trace.functions["b"].arrivals_s) == [0.5]

    def test_alibaba_genai_real_rows(self, tmp_path: Path) -> None:
        """The first rows of lora_request_trace.csv: one function per checkpoint model."""
        source = SHARED_TRACES / "alibaba-genai-2026" / "lora_request_trace.csv"
        if not source.exists():
            pytest.skip(f"{source} is not here (the shared traces sit beside the clone in CI)")
        head = "".join(source.open().readlines()[:4])
        trace = parse_trace(head, str(source))
        assert trace.format == "alibaba_genai"
        assert sorted(trace.functions) == ["M0000", "M0001"]
        # 16:57:50 → 18:16:14 is 4,704 s; 18:17:06 is 52 s later
        assert list(trace.functions["M0001"].arrivals_s) == [4704.0, 4756.0]
        assert list(trace.functions["M0001"].services_s) == [43.0, 36.0]

    def test_whole_shared_files(self) -> None:
        """Every shared request trace reads whole, with the row counts its README gives."""
        files = {
            "azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv": 19_366,
            "mooncake-fast25/conversation_trace.jsonl": 12_031,
            "azure-functions-2021-subset/Azure2021_200.csv": 199,
        }
        for name, rows in files.items():
            path = SHARED_TRACES / name
            if not path.exists():
                pytest.skip(f"{path} is not here")
            assert load_trace(path).requests == rows, name


class TestErrors:
    def test_unknown_header(self) -> None:
        """A header no reader knows asks for --format, listing the formats."""
        with pytest.raises(TraceError, match=r"pass --format .*azure_llm"):
            detect_format("a,b,c", "x.csv")

    def test_missing_column(self) -> None:
        """A forced format names the missing columns."""
        with pytest.raises(TraceError, match=r"missing column.*duration_ms"):
            parse_trace("timestamp_s,function\n1,a\n", "x.csv", fmt="torpor")

    def test_bad_number(self) -> None:
        with pytest.raises(TraceError, match="row 2: duration_ms is not a number"):
            parse_trace("timestamp_s,function,duration_ms\n1,a,fast\n", "x.csv")

    def test_token_model_parameters(self) -> None:
        assert TokenModel.parse("decode_tokens_per_s=20") == TokenModel(decode_tokens_per_s=20)
        with pytest.raises(TraceError, match="unknown parameter 'speed'"):
            TokenModel.parse("speed=3")


class TestWindowAndResample:
    def test_window_shifts_and_compresses(self) -> None:
        """[1, 3) of the torpor trace at ×2: a's request at 2 s → 0.5 s, 500 ms → 0.25 s."""
        part = parse_trace(TORPOR, "mine.csv").window(1.0, 3.0, time_scale=2)
        assert list(part.functions["a"].arrivals_s) == [0.5]
        assert list(part.functions["a"].services_s) == [0.25]
        assert "b" not in part.functions

    def test_resample_rate_and_seed(self) -> None:
        """Resampled functions run at about the asked rate; the same seed gives the same trace."""
        source = parse_trace(TORPOR + "13.0,a,100\n15.0,b,300\n", "mine.csv")
        one = resample(source, functions=3, rate_per_s=2.0, duration_s=500, seed=7)
        two = resample(source, functions=3, rate_per_s=2.0, duration_s=500, seed=7)
        assert sorted(one.functions) == ["fn-000", "fn-001", "fn-002"]
        assert all(one.functions[k].arrivals_s == two.functions[k].arrivals_s for k in one.functions)
        assert 0.8 * 3000 < one.requests < 1.2 * 3000
        assert set(one.functions["fn-000"].services_s) <= {1.5, 0.5, 0.2, 0.1, 0.3}
