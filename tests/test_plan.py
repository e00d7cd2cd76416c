"""The capacity planner (jobs/plan.py): its arithmetic, the figure it picks, what it says, and its errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.plan import MODELS, main, pair_flops

REPO = Path(__file__).resolve().parents[1]
XLMR = MODELS["baai/bge-reranker-v2-m3"]
MINILM = MODELS["all-minilm-l6-v2"]
H100 = "NVIDIA H100 80GB HBM3"


def row(model: str = "xlmr-large", shape: dict = XLMR, device: str = H100, contender: str = "ours",
        pairs_per_s: float = 500.0, mean_tokens: float = 200.0, date: str = "2026-01-02") -> dict:
    keep = ("layers", "hidden", "intermediate", "heads")
    return dict(model=model, shape={k: shape[k] for k in keep}, device=device, dtype="float16", contender=contender,
                pairs_per_s=pairs_per_s, real_tokens_per_s=pairs_per_s * mean_tokens, mean_tokens=mean_tokens,
                date=date, command=f"benchmarks/throughput.py --test {model}-{contender}", source="test")


@pytest.fixture
def figures(tmp_path: Path):
    def write(*rows: dict) -> str:
        path = tmp_path / "figures.json"
        path.write_text(json.dumps({"figures": list(rows)}))
        return str(path)
    return write


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys: pytest.CaptureFixture, figures_path: str, *argv: str, tokens: str = "200",
              model: str = "BAAI/bge-reranker-v2-m3", gpu: str = "H100") -> dict:
    code, out, err = run(capsys, "--pairs", "1e6", "--mean-tokens", tokens, "--model", model, "--gpu", gpu,
                         "--figures", figures_path, "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def test_gpu_hours_at_the_recorded_mean_are_pairs_over_the_recorded_rate(capsys, figures) -> None:
    p = plan_json(capsys, figures(row(pairs_per_s=500.0, mean_tokens=200.0)))
    assert p["pairs_per_s_per_gpu"] == pytest.approx(500.0, rel=1e-12)
    assert p["gpu_hours"] == pytest.approx(1e6 / (500.0 * 3600), rel=1e-12)
    assert p["scaling"] == [] and p["estimate"] is False


def test_doubling_mean_tokens_more_than_halves_pairs_per_s(capsys, figures) -> None:
    path = figures(row())
    short, long = (plan_json(capsys, path, tokens=t)["pairs_per_s_per_gpu"] for t in ("200", "400"))
    assert long < short / 2  # the attention term grows with n²
    # and exactly as the FLOPs say: same achieved FLOP/s at both lengths
    assert short * pair_flops(XLMR, 200) == pytest.approx(long * pair_flops(XLMR, 400), rel=1e-12)


def test_wall_time_is_gpu_hours_over_workers_and_cost_does_not_depend_on_them(capsys, figures) -> None:
    p = plan_json(capsys, figures(row()), "--workers", "1,8,32", "--price-per-gpu-hour", "2.5")
    assert [w["workers"] for w in p["workers"]] == [1, 8, 32]
    for w in p["workers"]:
        assert w["wall_hours"] == pytest.approx(p["gpu_hours"] / w["workers"], rel=1e-12)
        assert w["pairs_per_s"] == pytest.approx(p["pairs_per_s_per_gpu"] * w["workers"], rel=1e-12)
    assert p["cost"] == pytest.approx(p["gpu_hours"] * 2.5) and p["price_source"] == "given (--price-per-gpu-hour)"


def test_the_output_names_the_figure_used_its_device_and_the_scaling(capsys, figures) -> None:
    path = figures(row(), row(model="minilm", shape=MINILM, pairs_per_s=3000.0))
    code, out, _ = run(capsys, "--pairs", "1e6", "--mean-tokens", "300", "--model", "BAAI/bge-reranker-v2-m3",
                       "--gpu", "h100", "--figures", path, "--workers", "1,8")
    assert code == 0
    used = next(line for line in out.splitlines() if line.startswith("figure used:"))
    for part in ("xlmr-large", "24 layers", H100, "float16", "contender ours", "500.0 pairs/s", "200 mean tokens",
                 "2026-01-02", "benchmarks/throughput.py --test xlmr-large-ours"):
        assert part in used
    assert "scaling: tokens x" in out and "200 -> 300" in out
    assert "| 1 |" in out and "| 8 |" in out and "assumed price" in out


def test_l4_is_scaled_from_h100_by_the_ratio_of_fp16_peaks_and_says_so(capsys, figures) -> None:
    path = figures(row())
    h100, l4 = (plan_json(capsys, path, gpu=g) for g in ("H100", "L4"))
    assert l4["pairs_per_s_per_gpu"] == pytest.approx(h100["pairs_per_s_per_gpu"] * 121 / 989, rel=1e-12)
    assert l4["estimate"] is True and l4["scaling"][0]["factor"] == pytest.approx(121 / 989)
    _, out, _ = run(capsys, "--pairs", "1e6", "--mean-tokens", "200", "--model", "BAAI/bge-reranker-v2-m3",
                    "--gpu", "L4", "--figures", path)
    assert "121/989" in out and "x0.1223" in out and "estimate" in out and "no measurement on L4" in out


def test_scaling_a_figure_far_below_its_peak_warns_that_it_was_not_compute_bound(capsys, figures) -> None:
    p = plan_json(capsys, figures(row(model="minilm", shape=MINILM, pairs_per_s=3000.0)),
                  model="all-MiniLM-L6-v2", gpu="L4")
    assert "not compute-bound" in p["scaling"][-1]["why"]


def test_a_model_without_a_figure_takes_the_nearest_shape_on_that_gpu(capsys, figures) -> None:
    path = figures(row(model="minilm", shape=MINILM, pairs_per_s=3000.0), row())
    p = plan_json(capsys, path, model="Qwen/Qwen3-Reranker-0.6B")
    assert p["figure"]["model"] == "xlmr-large" and p["scaling"][0]["kind"] == "model"
    assert "nearest shape" in p["scaling"][0]["why"] and p["estimate"] is True
    p = plan_json(capsys, path, model="cross-encoder/ms-marco-MiniLM-L-6-v2")
    assert p["figure"]["model"] == "minilm" and p["scaling"] == []


def test_ours_is_preferred_over_compiled_unless_asked_and_a_figure_on_the_gpu_wins(capsys, figures) -> None:
    path = figures(row(contender="compiled", pairs_per_s=700.0), row(pairs_per_s=500.0),
                   row(device="NVIDIA L4", pairs_per_s=60.0))
    assert plan_json(capsys, path)["figure"]["contender"] == "ours"
    assert plan_json(capsys, path, "--compiled")["pairs_per_s_per_gpu"] == pytest.approx(700.0)
    l4 = plan_json(capsys, path, gpu="l4")
    assert l4["pairs_per_s_per_gpu"] == pytest.approx(60.0) and l4["estimate"] is False


def test_the_jobs_own_figure_is_preferred_over_the_bare_scorers(capsys, figures) -> None:
    path = figures(row(pairs_per_s=500.0), row(contender="job", pairs_per_s=430.0),
                   row(contender="compiled", pairs_per_s=700.0))
    assert plan_json(capsys, path)["pairs_per_s_per_gpu"] == pytest.approx(430.0)
    assert plan_json(capsys, path, "--compiled")["figure"]["contender"] == "compiled"  # (no "job compiled")
    code, out, _ = run(capsys, "--pairs", "1e9", "--mean-tokens", "200", "--model", "BAAI/bge-reranker-v2-m3",
                       "--gpu", "H100", "--figures", path)
    assert code == 0 and "note: the job's steady state (score stage, actors up)" in out


def test_cpu_uses_only_cpu_figures(capsys, figures) -> None:
    code, _, err = run(capsys, "--pairs", "1e6", "--mean-tokens", "200", "--model", "all-MiniLM-L6-v2",
                       "--gpu", "cpu", "--figures", figures(row()))
    assert code == 2 and "no recorded figure" in err and "CPU" in err
    path = figures(row(), row(model="minilm", shape=MINILM, device="CPU, 2 threads", pairs_per_s=60.0))
    p = plan_json(capsys, path, model="all-MiniLM-L6-v2", gpu="CPU")
    assert p["pairs_per_s_per_gpu"] == pytest.approx(60.0) and p["cost"] is None


@pytest.mark.parametrize(("flag", "value", "accepted"), [
    ("--model", "bert-base-uncased", ["BAAI/bge-reranker-v2-m3", "Qwen/Qwen3-Reranker-8B", "--shape"]),
    ("--gpu", "T4", ["H100", "H100-SXM", "H200", "A100", "L4", "A10G", "L40S", "cpu"]),
    ("--workers", "0,8", ["positive integers"]),
    ("--pairs", "lots", ["positive number"]),
    ("--shape", "24,1024", ["layers,hidden,intermediate"]),
])
def test_user_errors_name_the_flag_and_what_is_accepted(capsys, figures, flag, value, accepted) -> None:
    argv = {"--pairs": "1e6", "--mean-tokens": "200", "--model": "BAAI/bge-reranker-v2-m3", "--gpu": "L4",
            "--figures": figures(row())} | {flag: value}
    code, out, err = run(capsys, *(x for kv in argv.items() for x in kv))
    assert code == 2 and out == ""
    assert err.startswith(f"batch-rerank: error: {flag} {value!r}")
    assert all(a in err for a in accepted)


def test_a_custom_shape_plans_like_the_model_of_that_shape(capsys, figures) -> None:
    path = figures(row(), row(model="minilm", shape=MINILM, pairs_per_s=3000.0))
    custom = plan_json(capsys, path, "--shape", "24,1024,4096", tokens="300")
    assert custom["pairs_per_s_per_gpu"] == pytest.approx(plan_json(capsys, path, tokens="300")["pairs_per_s_per_gpu"])
    assert custom["figure"]["model"] == "xlmr-large" and [s["kind"] for s in custom["scaling"]] == ["tokens"]


def test_a_figures_file_with_a_missing_field_is_an_error(capsys, tmp_path) -> None:
    bad = row()
    del bad["pairs_per_s"]
    path = tmp_path / "figures.json"
    path.write_text(json.dumps({"figures": [bad]}))
    code, _, err = run(capsys, "--pairs", "1e6", "--mean-tokens", "200", "--model", "BAAI/bge-reranker-v2-m3",
                       "--gpu", "L4", "--figures", str(path))
    assert code == 2 and "figure 0 lacks pairs_per_s" in err


def test_a_figure_recorded_with_the_old_counting_is_used_and_the_plan_says_so(capsys, figures) -> None:
    old = figures(row(pairs_per_s=500.0) | {"old_counting": True})
    p = plan_json(capsys, old)
    assert p["pairs_per_s_per_gpu"] == pytest.approx(500.0) and len(p["warnings"]) == 1
    assert "old counting" in p["warnings"][0] and "not yet re-recorded on a GPU" in p["warnings"][0]
    code, out, _ = run(capsys, "--pairs", "1e6", "--mean-tokens", "200", "--model", "BAAI/bge-reranker-v2-m3",
                       "--gpu", "H100", "--figures", old)
    assert code == 0 and "warning: the figure used was recorded with the old counting" in out
    assert plan_json(capsys, figures(row()))["warnings"] == []
    _, out, _ = run(capsys, "--pairs", "1e6", "--mean-tokens", "200", "--model", "BAAI/bge-reranker-v2-m3",
                    "--gpu", "H100", "--figures", figures(row()))
    assert "warning:" not in out


def test_pair_flops_equal_the_benchmarks_useful_flops() -> None:
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    config = dict(num_hidden_layers=24, hidden_size=1024, intermediate_size=4096)
    assert pair_flops(XLMR, 300) == pytest.approx(throughput.useful_flops([300], config), rel=1e-12)


def test_the_seeded_figures_give_a_self_consistent_plan_for_bge_m3_on_l4_and_h100() -> None:
    def cli(gpu: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "jobs.plan", "--pairs", "1e9", "--mean-tokens", "300",
                              "--model", "BAAI/bge-reranker-v2-m3", "--gpu", gpu, "--workers", "1,8", "--json",
                              "--figures", str(REPO / "benchmarks" / "figures.json")],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        return json.loads(out)
    h100, h200, l4 = cli("H100"), cli("H200"), cli("L4")
    def key(p: dict) -> tuple:
        return p["figure"]["model"], p["figure"]["device"], p["figure"]["contender"], p["figure"]["dtype"]
    assert key(h100) == ("xlmr-large", H100, "ours", "float16")  # (no job figure on the H100)
    assert key(h200) == ("xlmr-large", "NVIDIA H200", "job", "float16")
    assert l4["figure"] == h200["figure"]  # (H100 and H200 have the same peak: the job's own figure wins)
    for p in (h100, h200, l4):
        fig = p["figure"]
        assert fig["mean_tokens"] == pytest.approx(fig["real_tokens_per_s"] / fig["pairs_per_s"], abs=0.05)
        assert p["gpu_hours"] * p["pairs_per_s_per_gpu"] * 3600 == pytest.approx(1e9)
        assert p["workers"][1]["wall_hours"] == pytest.approx(p["gpu_hours"] / 8)
    # 300 tokens instead of the recorded 395.6: FLOPs per pair fall by more than the length (attention is n²),
    # by less than its square
    fig = h100["figure"]
    ratio = fig["mean_tokens"] / 300
    assert fig["pairs_per_s"] * ratio < h100["pairs_per_s_per_gpu"] < fig["pairs_per_s"] * ratio**2
    assert l4["pairs_per_s_per_gpu"] == pytest.approx(h200["pairs_per_s_per_gpu"] * 121 / 989)
    assert h100["estimate"] is False and h200["estimate"] is False and l4["estimate"] is True
    # Every GPU figure shipped was recorded with the old counting until a GPU re-records it.
    assert all(p["warnings"] for p in (h100, h200, l4))


def test_passages_per_pair_multiply_the_work_of_a_pair(capsys, figures) -> None:
    path = figures(row(pairs_per_s=500.0, mean_tokens=200.0))
    one = plan_json(capsys, path)
    fifteen = plan_json(capsys, path, "--passages-per-pair", "15")
    assert fifteen["pairs_per_s_per_gpu"] == pytest.approx(500.0 / 15, rel=1e-12)
    assert fifteen["gpu_hours"] == pytest.approx(one["gpu_hours"] * 15, rel=1e-12)
    assert [s["kind"] for s in fifteen["scaling"]] == ["passages"]
    code, out, _ = run(capsys, "--pairs", "1e6", "--mean-tokens", "200", "--model", "BAAI/bge-reranker-v2-m3",
                       "--gpu", "H100", "--figures", path, "--passages-per-pair", "15")
    assert code == 0 and out.startswith("# 1,000,000 pairs x 15 passages x 200 tokens")
    assert run(capsys, "--pairs", "1e6", "--mean-tokens", "200", "--model", "BAAI/bge-reranker-v2-m3", "--gpu",
               "H100", "--figures", path, "--passages-per-pair", "0")[0] == 2
