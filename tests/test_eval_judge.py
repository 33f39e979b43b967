"""The OpenAI-compatible judge client against a stub server, and the judged benchmarks' loaders and formulas."""

from __future__ import annotations

import json
import socket

import pytest
from eval_support import FIXTURES, REAL_BENCHMARKS, StubJudge, sensible_judge
from PIL import Image

from thinkgen.eval.dpg import GridLayout, Question, load_dpg, load_questions, mask_by_dependency
from thinkgen.eval.imgedit import ImgEditScorer, load_imgedit, load_rubrics
from thinkgen.eval.judge import (
    JudgeAnswerError,
    JudgeClient,
    JudgeConfig,
    JudgeUnavailable,
    parse_labelled_scores,
    parse_numbered_yes_no,
)
from thinkgen.eval.risebench import RiseBenchScorer, load_risebench
from thinkgen.eval.wise import WiseScorer, load_wise, weighted_overall, wiscore

IMAGE = Image.new("RGB", (16, 16), "red")


def client(url: str, retries: int = 2) -> JudgeClient:
    return JudgeClient(JudgeConfig(url, "stub-judge", max_retries=retries, retry_wait_s=0.0, timeout_s=5))


def scores_parser(text: str) -> dict[str, float]:
    return parse_labelled_scores(text, ["Score"], 1, 5)


# ----------------------------------------------------------------------------- client


def test_judge_sends_images_and_parses() -> None:
    with StubJudge(lambda text, n: f"**Score:** 4 ({n} images)") as stub:
        assert client(stub.url).ask("rate", [IMAGE, IMAGE], scores_parser) == {"Score": 4.0}
    assert stub.requests == [("rate", 2)]


def test_judge_retries_garbage_then_succeeds() -> None:
    answers = iter(["I refuse", "Score: 9", "Score: 3"])
    with StubJudge(lambda text, n: next(answers)) as stub:
        assert client(stub.url).ask("rate", [IMAGE], scores_parser) == {"Score": 3.0}
    assert len(stub.requests) == 3


def test_judge_gives_up_on_garbage_with_a_clear_error() -> None:
    with StubJudge(lambda text, n: "lorem ipsum") as stub:
        with pytest.raises(JudgeAnswerError, match="stayed malformed after 3 tries.*no score for 'Score'.*lorem"):
            client(stub.url).ask("rate", [IMAGE], scores_parser)
    assert len(stub.requests) == 3


def test_judge_retries_server_errors_and_refuses_client_errors() -> None:
    replies = iter([(503, "busy"), "Score: 5"])
    with StubJudge(lambda text, n: next(replies)) as stub:
        assert client(stub.url).ask("rate", [], scores_parser) == {"Score": 5.0}
    with StubJudge(lambda text, n: (404, '{"error": "model not found"}')) as stub:
        with pytest.raises(JudgeUnavailable, match="HTTP 404.*model not found"):
            client(stub.url).ask("rate", [], scores_parser)
    assert len(stub.requests) == 1
    with StubJudge(lambda text, n: (200, '{"unexpected": true}')) as stub:
        with pytest.raises(JudgeUnavailable, match="not a chat completion"):
            client(stub.url, retries=1).complete("rate")


def test_judge_that_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeUnavailable, match=f"cannot reach the judge at http://127.0.0.1:{port}/v1/chat/completions"):
        client(f"http://127.0.0.1:{port}/v1", retries=1).complete("rate")


def test_parsers() -> None:
    assert parse_labelled_scores("consistency: 1\nRealism - no\nConsistency: 2", ["Consistency"], 0, 2) == \
        {"Consistency": 2.0}
    with pytest.raises(ValueError, match="outside 0..2"):
        parse_labelled_scores("Consistency: 3", ["Consistency"], 0, 2)
    assert parse_numbered_yes_no("1: Yes\n2. no\n**3)** yes", 3) == [True, False, True]
    with pytest.raises(ValueError, match=r"question\(s\) \[2\]"):
        parse_numbered_yes_no("1: yes\n2: maybe", 2)
    with pytest.raises(ValueError, match="http"):
        JudgeConfig("127.0.0.1:8000", "m")


# ----------------------------------------------------------------------------- WISE


def test_wise_formulas() -> None:
    assert wiscore(2, 2, 2) == pytest.approx(1.0)
    assert wiscore(2, 1, 1) == pytest.approx((1.4 + 0.2 + 0.1) / 2)
    full = {"culture": 1.0, "time": 0.5, "space": 0.0, "biology": 1.0, "physics": 0.0, "chemistry": 0.5}
    assert weighted_overall(full) == pytest.approx(0.4 + 0.0835 + 0.1 + 0.05)
    assert weighted_overall({"culture": 0.5, "time": 1.0}) == pytest.approx((0.2 + 0.167) / 0.567)


def test_wise_loader_and_scorer() -> None:
    items = load_wise([FIXTURES / "wise" / "knowledge.json"])
    assert [it.category for it in items] == ["culture", "physics", "biology", "chemistry", "time", "space"]
    with StubJudge(sensible_judge) as stub:
        scorer = WiseScorer(client(stub.url))
        sample = scorer.score(items[0], [IMAGE, IMAGE], {})
    assert sample["score"] == pytest.approx(0.85) and len(sample["per_image"]) == 2
    assert "Explanation" not in stub.requests[0][0] and "A carrot." in stub.requests[0][0]
    summary = scorer.aggregate([{**sample, "category": it.category, "error": None} for it in items], items)
    assert summary["overall"] == pytest.approx(0.85) and summary["metrics"]["complete"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"Prompt": "x"}', "expected a JSON list"),
    ('[{"prompt_id": 1, "Prompt": "x", "Explanation": "y", "Category": "Music"}]', "entry 0: field 'Category'"),
    ('[{"prompt_id": 1, "Prompt": "", "Explanation": "y", "Category": "time"}]', "entry 0: field 'Prompt'"),
    ('[{"prompt_id": 1, "Prompt": "x",', "not valid JSON: line 1"),
])
def test_wise_loader_errors(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_wise([path])


@pytest.mark.skipif(not REAL_BENCHMARKS.is_dir(), reason="the benchmark files are not next to the repository")
def test_real_judged_files_parse() -> None:
    wise = REAL_BENCHMARKS / "wise"
    assert len(load_wise([wise / "cultural_common_sense.json", wise / "natural_science.json",
                          wise / "spatio-temporal_reasoning.json"])) == 1000
    assert len(load_dpg(REAL_BENCHMARKS / "dpg" / "prompts.jsonl")) == 1065
    rubrics = load_rubrics(REAL_BENCHMARKS / "imgedit" / "judge_rubrics.json")
    assert rubrics["style"].labels == ("Style Fidelity", "Content Preservation", "Rendering Quality")
    with pytest.raises(FileNotFoundError, match="76 of 76 input images are missing"):
        load_risebench(REAL_BENCHMARKS / "risebench" / "data_total.json", FIXTURES)  # 64 inputs + 12 references


# ----------------------------------------------------------------------------- RISEBench


def test_risebench_loader_and_accuracy() -> None:
    items = load_risebench(FIXTURES / "risebench" / "data_total.json", FIXTURES / "risebench" / "images")
    assert [it.category for it in items] == ["temporal_reasoning", "logical_reasoning"]
    with StubJudge(sensible_judge) as stub:
        scorer = RiseBenchScorer(client(stub.url))
        samples = [{**scorer.score(it, [IMAGE], {}), "category": it.category, "error": None} for it in items]
    # Temporal: plausibility 4 → not solved. Logical: plausibility does not apply → solved.
    assert [s["passed"] for s in samples] == [False, True]
    assert stub.requests[0][1] == 2 and stub.requests[1][1] == 3  # input (+ reference) + output
    summary = scorer.aggregate(samples, items)
    assert summary["overall"] == pytest.approx(50.0)
    assert summary["categories"] == {"temporal_reasoning": 0.0, "logical_reasoning": 100.0}
    assert summary["metrics"]["mean_plausibility"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="needs --images-dir"):
        load_risebench(FIXTURES / "risebench" / "data_total.json", None)
    with pytest.raises(FileNotFoundError, match="input image folder not found"):
        load_risebench(FIXTURES / "risebench" / "data_total.json", FIXTURES / "nope")


# ----------------------------------------------------------------------------- ImgEdit


def test_imgedit_rubrics_and_type_means() -> None:
    items = load_imgedit(FIXTURES / "imgedit" / "basic_edit.json", FIXTURES / "imgedit" / "images")
    rubrics = load_rubrics(FIXTURES / "imgedit" / "judge_rubrics.json")
    assert rubrics["add"].labels == ("Added Object", "Blending", "Preservation")
    with StubJudge(sensible_judge) as stub:
        scorer = ImgEditScorer(client(stub.url), rubrics)
        samples = [{**scorer.score(it, [IMAGE], {}), "category": it.category, "error": None} for it in items]
    assert "Add a red hat to the cat." in stub.requests[0][0] and "<edit_prompt>" not in stub.requests[0][0]
    assert samples[0]["per_image"][0]["scores"] == {"Added Object": 3.0, "Blending": 4.0, "Preservation": 5.0}
    summary = scorer.aggregate(samples, items)
    assert summary["categories"] == {"add": 4.0, "remove": 4.0, "style": 4.0} and summary["overall"] == 4.0
    default = load_rubrics(None)
    assert default["compose"].labels == ("Instruction Compliance", "Visual Quality", "Detail Preservation")


def test_imgedit_loader_errors(tmp_path) -> None:
    bad = tmp_path / "edits.json"
    bad.write_text(json.dumps({"1": {"id": "a.png", "prompt": "x", "edit_type": "warp"}}))
    with pytest.raises(ValueError, match="key '1': field 'edit_type' is 'warp'"):
        load_imgedit(bad, tmp_path)
    bad.write_text(json.dumps({"1": {"id": "a.png", "prompt": "x", "edit_type": "add"}}))
    with pytest.raises(FileNotFoundError, match="1 of 1 input images are missing.*a.png"):
        load_imgedit(bad, tmp_path)


# ----------------------------------------------------------------------------- DPG


def test_dpg_dependency_masking() -> None:
    qs = [Question(1, (0,), "entity", "a"), Question(2, (1,), "attribute", "b"), Question(3, (2,), "relation", "c"),
          Question(4, (0,), "entity", "d")]
    assert mask_by_dependency(qs, [True, True, True, True]) == [1, 1, 1, 1]
    assert mask_by_dependency(qs, [False, True, True, True]) == [0, 0, 0, 1]  # carries down the chain
    assert mask_by_dependency(qs, [True, False, True, False]) == [1, 0, 0, 0]


def test_dpg_scorer_and_grid(tmp_path) -> None:
    from thinkgen.eval.dpg import DPGScorer

    items = load_dpg(FIXTURES / "dpg" / "prompts.jsonl")
    questions = load_questions(FIXTURES / "dpg" / "questions.csv")
    tiles = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue", "white")]
    paths = GridLayout().write(tmp_path, items[0], tiles)
    assert paths == ["a1.png"] and Image.open(tmp_path / "a1.png").size == (16, 16)
    back = GridLayout().read(tmp_path, items[0], paths, 4)
    assert [im.getpixel((3, 3)) for im in back] == [(255, 0, 0), (0, 128, 0), (0, 0, 255), (255, 255, 255)]
    with StubJudge(sensible_judge) as stub:
        scorer = DPGScorer(client(stub.url), questions)
        samples = [{**scorer.score(it, back, {}), "category": it.category, "error": None} for it in items]
    # a1: "Is the cup blue?" → no; its child none; question 5 depends on 1 and 3 (both yes) → 4/5.
    assert samples[0]["score"] == pytest.approx(80.0) and samples[1]["score"] == pytest.approx(100.0)
    assert len(stub.requests) == 8  # one request per image answers all its questions
    summary = scorer.aggregate(samples, items)
    assert summary["overall"] == pytest.approx(90.0)
    assert summary["categories"]["attribute"] == pytest.approx(200 / 3)


def test_dpg_loader_errors(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"item_id": "1", "prompt": "a"}\n{"item_id": "2"}\n')
    with pytest.raises(ValueError, match="line 2: field 'prompt'"):
        load_dpg(path)
    csv_path = tmp_path / "q.csv"
    csv_path.write_text("item_id,proposition_id,question_natural_language\n1,1,q\n")
    with pytest.raises(ValueError, match="missing column"):
        load_questions(csv_path)
