"""Distillation labels (jobs/labels.py) against a plain-Python reference, and the training formats
(jobs/label_formats.py) read by their consumers: FlagEmbedding's reranker train dataset and model,
and sentence-transformers' CrossEncoderTrainer."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs.errors import ConfigError, InputError
from jobs.label_formats import FLAG_SCHEMA, cross_encoder_table, flag_embedding_records, write_jsonl
from jobs.labels import DEFAULT_PROMPT, LabelsConfig, Teacher, label_queries, output_schema

PROB = {"logit": lambda s: 1 / (1 + math.exp(-s)), "probability": lambda s: s, "cosine": lambda s: (1 + s) / 2}


def reference(rows: list[dict], teachers: list[Teacher], cfg: LabelsConfig, qrels: dict | None) -> list[dict]:
    """The label rules, one query and one candidate at a time."""
    by_query: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_query[row["query_id"]].append(row)
    out = []
    for qid in sorted(by_query):
        cands, combined = by_query[qid], [0.0] * len(by_query[qid])
        for t in teachers:
            vals = [c[t.column] for c in cands]
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
            for i, v in enumerate(vals):
                part = PROB[t.kind](v) if cfg.combine == "probability" else (v - mean) / std if std else 0.0
                combined[i] += t.weight / sum(t.weight for t in teachers) * part
        order = sorted(range(len(cands)), key=lambda i: (-combined[i], cands[i]["doc_id"]))
        exps = [math.exp((combined[i] - max(combined)) / cfg.temperature) for i in order]
        ranked = []
        for rank, (i, e) in enumerate(zip(order, exps, strict=True), start=1):
            grade = (qrels or {}).get(qid, {}).get(cands[i]["doc_id"], -math.inf)
            positive = rank <= cfg.positives_top_k if qrels is None else grade >= cfg.min_relevance
            ranked.append(dict(cands[i], combined=combined[i], soft_label=e / sum(exps), teacher_rank=rank,
                               positive=positive, hard_negative=False))
        positives, negatives = [c for c in ranked if c["positive"]], []
        for c in ranked:
            if (positives and not c["positive"] and len(negatives) < cfg.max_negatives
                    and cfg.negatives_rank_window[0] <= c["teacher_rank"] <= cfg.negatives_rank_window[1]
                    and c["combined"] <= min(p["combined"] for p in positives) - cfg.negatives_margin):
                c["hard_negative"] = True
                negatives.append(c["doc_id"])
        out.append({"query_id": qid, "query": cands[0]["query"], "candidates": ranked,
                    "positives": [c["doc_id"] for c in positives], "hard_negatives": negatives})
    return out


def random_rows(seed: int) -> list[dict]:
    """Queries of many sizes, shuffled together; q4 has a tie, q_flat the same score everywhere."""
    rng, rows = random.Random(seed), []
    for q, size in enumerate([1, 2, 5, 9, 14, 30]):
        rows += [{"query_id": f"q{q}", "query": f"query {q}", "doc_id": f"d{d:02d}", "doc": f"text {q}-{d}",
                  "first_stage_rank": rng.choice([None, d]), "ce": rng.gauss(0, 3), "bi": rng.uniform(-1, 1)}
                 for d in rng.sample(range(100), size)]
    tied = [r for r in rows if r["query_id"] == "q4"][:2]
    tied[1]["ce"], tied[1]["bi"] = tied[0]["ce"], tied[0]["bi"]
    rows += [{"query_id": "q_flat", "query": "flat", "doc_id": f"d{d:02d}", "doc": "same", "first_stage_rank": None,
              "ce": 0.3, "bi": 0.3} for d in rng.sample(range(100), 6)]
    rng.shuffle(rows)
    return rows


def to_table(rows: list[dict]) -> pa.Table:
    """The flat table, in three chunks; scores float32 as the scoring job writes them."""
    types = {"first_stage_rank": pa.int32(), "ce": pa.float32(), "bi": pa.float32()}
    schema = pa.schema([(k, types.get(k, pa.string())) for k in rows[0]])
    k = len(rows) // 3
    return pa.concat_tables(pa.Table.from_pylist(p, schema=schema) for p in (rows[:k], rows[k:2 * k], rows[2 * k:]))


def qrels_for(rows: list[dict]) -> dict[str, dict[str, int]]:
    docs = defaultdict(list)
    for r in rows:
        docs[r["query_id"]].append(r["doc_id"])
    grades = [2, 0, 1, 2, 1]  # (for each query's first five candidates by doc id; the rest have none)
    qrels = {q: {d: g for d, g in zip(sorted(docs[q]), grades, strict=False) if g} for q in ("q2", "q3", "q4", "q5")}
    return qrels | {"q0": {"not-a-candidate": 2}, "elsewhere": {"x": 1}}  # q1, q_flat: no entry


CONFIGS = [{}, {"temperature": 0.5, "positives_top_k": 2, "negatives_rank_window": (2, 6), "negatives_margin": 0.3,
                "max_negatives": 3},
           {"combine": "probability", "temperature": 2.0, "positives_top_k": 3, "negatives_rank_window": (1, 10),
            "negatives_margin": 0.05, "max_negatives": 4, "min_relevance": 2}]


@pytest.mark.parametrize("with_qrels", [False, True])
@pytest.mark.parametrize("kinds", [("logit", "cosine"), ("probability", "logit")])
@pytest.mark.parametrize("config", CONFIGS)
def test_labels_match_the_reference(config: dict, kinds: tuple[str, str], with_qrels: bool) -> None:
    rows = random_rows(seed=7)
    for r in rows if kinds[0] == "probability" else []:
        r["ce"] = PROB["logit"](r["ce"])
    table = to_table(rows)
    teachers = [Teacher("cross", "ce", weight=3.0, kind=kinds[0]), Teacher("bienc", "bi", weight=0.5, kind=kinds[1])]
    cfg, qrels = LabelsConfig(**config), qrels_for(rows) if with_qrels else None
    out = label_queries(table, teachers, cfg, qrels)
    assert out.schema == output_schema(teachers)
    expected = reference(table.to_pylist(), teachers, cfg, qrels)
    assert out["query_id"].to_pylist() == [e["query_id"] for e in expected]
    exact = ("doc_id", "doc", "first_stage_rank", "teacher_rank", "positive", "hard_negative")
    for got, want in zip(out.to_pylist(), expected, strict=True):
        assert (got["query"], got["positives"], got["hard_negatives"], got["num_candidates"]) == (
            want["query"], want["positives"], want["hard_negatives"], len(want["candidates"]))
        assert sum(c["soft_label"] for c in got["candidates"]) == pytest.approx(1.0, rel=1e-12)
        for g, w in zip(got["candidates"], want["candidates"], strict=True):
            assert [g[k] for k in exact] + [g["cross"], g["bienc"]] == [w[k] for k in exact] + [w["ce"], w["bi"]]
            assert (g["combined"], g["soft_label"]) == pytest.approx((w["combined"], w["soft_label"]), rel=1e-9)


def test_all_equal_scores_ties_and_single_candidates() -> None:
    teachers = [Teacher("cross", "ce"), Teacher("bienc", "bi", weight=2.0, kind="cosine")]
    out = {r["query_id"]: r["candidates"] for r in label_queries(
        to_table(random_rows(seed=3)), teachers, LabelsConfig()).to_pylist()}
    assert [c["combined"] for c in out["q_flat"]] == [0.0] * 6 and out["q0"][0]["combined"] == 0.0
    assert [c["soft_label"] for c in out["q_flat"]] == pytest.approx([1 / 6] * 6)
    assert [c["doc_id"] for c in out["q_flat"]] == sorted(c["doc_id"] for c in out["q_flat"])
    tied = [c for c in out["q4"] if sum(d["combined"] == c["combined"] for d in out["q4"]) == 2]
    assert len(tied) == 2 and tied[0]["doc_id"] < tied[1]["doc_id"]
    assert tied[1]["teacher_rank"] == tied[0]["teacher_rank"] + 1
    # float64 0.1 three times: the mean is off by rounding, which is not a spread (z stays 0, not +-1)
    tenths = pa.table({"query_id": ["t"] * 3, "query": ["T"] * 3, "doc_id": ["a", "b", "c"], "doc": ["x"] * 3,
                       "s": pa.array([0.1] * 3, pa.float64())})
    got = label_queries(tenths, [Teacher("t", "s")], LabelsConfig()).to_pylist()[0]["candidates"]
    assert [c["combined"] for c in got] == [0.0] * 3


def test_window_margin_and_max_negatives_by_hand() -> None:
    scores = {"d0": 0.9, "d1": 0.86, "d2": 0.7, "d3": 0.6, "d4": 0.5, "d5": 0.4, "d6": 0.3}
    table = pa.Table.from_pylist([{"query_id": "q", "query": "Q", "doc_id": d, "doc": d, "p": s}
                                  for d, s in reversed(scores.items())])
    teachers = [Teacher("t", "p", kind="probability")]
    cfg = LabelsConfig(combine="probability", negatives_rank_window=(2, 6), negatives_margin=0.1, max_negatives=3)
    out = label_queries(table, teachers, cfg).to_pylist()[0]
    # d1 is within 0.1 of the positive; d5 is past max_negatives; d6 is outside the window
    assert (out["positives"], out["hard_negatives"]) == (["d0"], ["d2", "d3", "d4"])
    assert [c["teacher_rank"] for c in out["candidates"]] == list(range(1, 8))
    assert out["candidates"][0]["first_stage_rank"] is None
    cfg = LabelsConfig(combine="probability", positives_top_k=2, negatives_rank_window=(1, 3))
    out = label_queries(table, teachers, cfg).to_pylist()[0]
    assert (out["positives"], out["hard_negatives"]) == (["d0", "d1"], ["d2"])


def test_qrels_without_a_positive_give_no_positives_and_no_negatives() -> None:
    rows = [{"query_id": q, "query": q, "doc_id": d, "doc": d, "s": s}
            for q in ("judged", "missing", "graded") for d, s in (("a", 3.0), ("b", 2.0), ("c", 1.0), ("e", 0.0))]
    qrels = {"judged": {"zz": 3, "c": 0}, "graded": {"b": 1, "c": 2}}
    cfg = LabelsConfig(negatives_rank_window=(1, 10), min_relevance=2)
    out = label_queries(pa.Table.from_pylist(rows), [Teacher("t", "s")], cfg, qrels).to_pylist()
    assert [(r["query_id"], r["positives"], r["hard_negatives"]) for r in out] == [
        ("graded", ["c"], ["e"]), ("judged", [], []), ("missing", [], [])]
    assert sum(c["positive"] or c["hard_negative"] for r in out for c in r["candidates"]) == 2


def test_per_query_groups_give_the_same_result_as_the_whole_table() -> None:
    """What map_groups(query_id) does: each query labelled alone, then concatenated."""
    table, teachers, cfg = to_table(random_rows(seed=11)), [Teacher("cross", "ce", 2.0)], LabelsConfig()
    whole = label_queries(table, teachers, cfg)
    parts = [label_queries(table.filter(pc.equal(table["query_id"], q)), teachers, cfg)
             for q in reversed(whole["query_id"].to_pylist())]
    assert pa.concat_tables(parts).sort_by("query_id").equals(whole)
    assert label_queries(table.slice(0, 0), teachers, cfg).schema == whole.schema


def test_the_labels_do_not_depend_on_the_order_of_the_rows() -> None:
    """Bit for bit: a shuffle delivers a query's rows in any order, run after run."""
    table = to_table(random_rows(seed=5))
    teachers, cfg = [Teacher("cross", "ce", 2.0), Teacher("bi", "bi", 1.0, "cosine")], LabelsConfig()
    whole = label_queries(table, teachers, cfg)
    for seed in range(3):
        shuffled = table.take(pa.array(np.random.default_rng(seed).permutation(len(table))))
        assert label_queries(shuffled, teachers, cfg).equals(whole)


@pytest.mark.parametrize(("teachers", "error", "words"), [
    ([Teacher("x", "missing_col")], InputError, ["'missing_col'", "query_id, query"]),
    ([Teacher("a", "ce", 0.0), Teacher("b", "bi", 0.0)], ConfigError, ["sum to 0"]),
    ([Teacher("a", "ce", -1.0)], ConfigError, ["'a'", ">= 0"]),
    ([Teacher("combined", "ce")], ConfigError, ["'combined'", "unique"]),
    ([Teacher("a", "ce", kind="softmax")], ConfigError, ["'softmax'", "logit, probability, cosine"]),  # type: ignore[arg-type]
    ([], ConfigError, ["at least one teacher"]),
])
def test_user_errors_name_what_is_wrong(teachers: list[Teacher], error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        label_queries(to_table(random_rows(seed=1)), teachers, LabelsConfig())
    assert all(w in str(info.value) for w in words), str(info.value)


def test_bad_rows_and_bad_config() -> None:
    rows = [{"query_id": "q", "query": "Q", "doc_id": "a", "doc": "A", "s": v} for v in (1.0, 2.0)]
    with pytest.raises(InputError, match=r"repeated \(query_id, doc_id\).*'q', 'a'"):
        label_queries(pa.Table.from_pylist(rows), [Teacher("t", "s")], LabelsConfig())
    with pytest.raises(InputError, match=r"'s'.*NaN"):
        label_queries(pa.Table.from_pylist([{**rows[0], "s": float("nan")}]), [Teacher("t", "s")], LabelsConfig())
    with pytest.raises(ConfigError, match=r"labels.negatives_rank_window: .*1 <= lo <= hi") as info:
        LabelsConfig.load({"negatives_rank_window": [5, 2], "temperature": 0, "bogus": 1})
    assert "labels.temperature" in str(info.value) and "labels.bogus" in str(info.value)
    assert LabelsConfig.load({"negatives_rank_window": [1, 1]}).negatives_rank_window == (1, 1)
    assert LabelsConfig().prompt == DEFAULT_PROMPT and DEFAULT_PROMPT.startswith("Given a query A and a passage B")


def nested_sample() -> tuple[pa.Table, LabelsConfig]:
    """8 queries, one Chinese; q0 (1 candidate) has no hard negative."""
    rows = random_rows(seed=5) + [{"query_id": "zh", "query": "什么是重排序？", "doc_id": f"z{i}",
                                   "doc": f"重排序模型 {i}", "first_stage_rank": i, "ce": float(i), "bi": 0.1 * i}
                                  for i in range(8)]
    cfg = LabelsConfig(temperature=0.7, negatives_rank_window=(2, 20), max_negatives=5)
    teachers = [Teacher("cross", "ce", 2.0), Teacher("bienc", "bi", kind="cosine")]
    return label_queries(to_table(rows), teachers, cfg), cfg


def test_flag_embedding_records_hold_the_labelled_texts_and_scores() -> None:
    nested, cfg = nested_sample()
    records = flag_embedding_records(nested, prompt=cfg.prompt, temperature=cfg.temperature)
    assert records.table.schema == FLAG_SCHEMA and (records.dropped_no_positive, records.dropped_no_negative) == (0, 1)
    assert len(records.table) == len(nested) - 1 == 7
    by_query = {r["query"]: r["candidates"] for r in nested.to_pylist()}
    for rec in records.table.to_pylist():
        pos, neg = ([c for c in by_query[rec["query"]] if c[flag]] for flag in ("positive", "hard_negative"))
        assert (rec["pos"], rec["neg"], rec["prompt"]) == ([c["doc"] for c in pos], [c["doc"] for c in neg],
                                                            DEFAULT_PROMPT)
        assert rec["pos_scores"] == pytest.approx([c["combined"] / cfg.temperature for c in pos])
        # FlagEmbedding's softmax over a group = our soft labels renormalised over that group
        logits, soft = np.array(rec["pos_scores"] + rec["neg_scores"][:2]), np.array(
            [c["soft_label"] for c in [*pos, *neg[:2]]])
        assert np.exp(logits) / np.exp(logits).sum() == pytest.approx(soft / soft.sum(), rel=1e-9)
    raw = flag_embedding_records(nested, score="cross").table.to_pylist()[0]
    assert raw["pos_scores"] == [c["cross"] for c in by_query[raw["query"]] if c["positive"]]
    with pytest.raises(ConfigError, match=r"'doc'.*combined"):
        flag_embedding_records(nested, score="doc")
    part = flag_embedding_records(nested.slice(1, 2), prompt=cfg.prompt, temperature=cfg.temperature)
    assert part.table.to_pylist() == records.table.slice(0, 2).to_pylist()
    fs = fsspec.filesystem("memory")
    assert write_jsonl(records.table, fs, "/labels-test/out/train.jsonl") == 7
    text = fs.cat_file("/labels-test/out/train.jsonl").decode("utf-8")
    assert "什么是重排序？" in text and "\\u" not in text
    assert [json.loads(line) for line in text.splitlines()] == records.table.to_pylist()


def test_flag_embedding_loads_the_jsonl(tmp_path: Path, tiny_bert_dir: str) -> None:
    """FlagEmbedding's own reranker train datasets, collator and model read the file."""
    import torch
    from FlagEmbedding.abc.finetune.reranker import AbsRerankerCollator, AbsRerankerDataArguments
    from FlagEmbedding.abc.finetune.reranker.AbsDataset import AbsLLMRerankerTrainDataset, AbsRerankerTrainDataset
    from FlagEmbedding.finetune.reranker.encoder_only.base.modeling import CrossEncoderModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    records = flag_embedding_records(nested_sample()[0]).table
    write_jsonl(records, fsspec.filesystem("file"), str(tmp_path / "train.jsonl"))
    args = AbsRerankerDataArguments(train_data=[str(tmp_path / "train.jsonl")], knowledge_distillation=True,
                                    train_group_size=4, query_max_len=16, passage_max_len=32,
                                    cache_path=str(tmp_path / "hf-cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    random.seed(0)
    dataset = AbsRerankerTrainDataset(args, tokenizer)
    assert len(dataset) == len(records)
    assert dataset.dataset.features.arrow_schema.field("neg_scores").type == pa.list_(pa.float64())
    items = [dataset[i] for i in range(2)]
    for (pairs, teacher), rec in zip(items, records.to_pylist(), strict=False):
        assert len(pairs) == len(teacher) == 4
        assert teacher[0] in rec["pos_scores"] and set(teacher[1:]) <= set(rec["neg_scores"])
    batch = AbsRerankerCollator(tokenizer=tokenizer, query_max_len=16, passage_max_len=32)(items)
    assert batch["pair"]["input_ids"].shape[0] == 8
    model = CrossEncoderModel(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir), tokenizer, 2)
    loss = model.train()(**batch).loss  # cross-entropy + distillation from the teacher scores
    assert torch.isfinite(loss) and loss.item() > 0
    prompt_ids = tokenizer(DEFAULT_PROMPT, add_special_tokens=False)["input_ids"]
    llm_inputs = AbsLLMRerankerTrainDataset(args, tokenizer)[0][0]  # LLM rerankers append the record's prompt
    assert llm_inputs[0]["input_ids"][-len(prompt_ids):] == prompt_ids


@pytest.mark.parametrize("label", ["hard", "soft"])
def test_cross_encoder_trainer_trains_on_the_table(label: str, tmp_path: Path, tiny_bert_dir: str) -> None:
    import datasets
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    nested = nested_sample()[0]
    table = cross_encoder_table(nested, label=label)
    labels, flags = table["label"].to_numpy(), [c for r in nested.to_pylist() for c in r["candidates"]]
    assert table.column_names == ["query", "doc", "label"] and table["label"].type == pa.float32()
    if label == "hard":
        assert len(table) == sum(c["positive"] or c["hard_negative"] for c in flags) and set(labels) == {0.0, 1.0}
    else:
        assert len(table) == len(flags) and ((labels > 0) & (labels < 1)).all()
    pq.write_table(table, tmp_path / "pairs.parquet")
    train = datasets.Dataset.from_parquet(str(tmp_path / "pairs.parquet"), cache_dir=str(tmp_path / "hf-cache"))
    model = CrossEncoder(tiny_bert_dir, num_labels=1, max_length=48, device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = CrossEncoderTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train, loss=BinaryCrossEntropyLoss(model))
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) for v in [*losses, result.training_loss]), losses
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())


def test_cross_encoder_soft_labels_by_combine_mode() -> None:
    rows = [{"query_id": "q", "query": "Q", "doc_id": d, "doc": d, "p": p} for d, p in (("a", 0.9), ("b", 0.2))]
    table, teachers = pa.Table.from_pylist(rows), [Teacher("t", "p", kind="probability")]
    prob = label_queries(table, teachers, LabelsConfig(combine="probability"))
    assert cross_encoder_table(prob, "soft", combine="probability")["label"].to_pylist() == pytest.approx([0.9, 0.2])
    z = label_queries(table, teachers, LabelsConfig())  # z = +1, -1
    assert cross_encoder_table(z, "soft")["label"].to_pylist() == pytest.approx([1 / (1 + math.e ** -1),
                                                                                 1 / (1 + math.e)])
    with pytest.raises(ConfigError, match="combine: zscore"):
        cross_encoder_table(z, "soft", combine="probability")
    assert cross_encoder_table(z)["label"].to_pylist() == [1.0]  # b (rank 2) is outside the window (3, 50)
