"""``thinkgen eval``: end to end on the tiny pipeline — nano through the CLI, judged runs with a stub judge
that fails in every way, reports, comparison, and clear errors for bad input."""

from __future__ import annotations

import json
import socket

import pytest
from eval_support import FIXTURES, StubJudge, eval_args, sensible_judge, tiny_pipeline

from thinkgen.cli import main
from thinkgen.eval.cli import run_benchmark


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_pipeline().save_pretrained(path)
    return path


def _nano_argv(model_dir, out, *extra: str) -> list[str]:
    return ["eval", "nano", "--model", str(model_dir), "--out", str(out), "--limit", "1", "--scenarios",
            "composition", "edit", "--size", "16", "16", "--max-thinking-tokens", "4", "--max-instruction-tokens",
            "3", *extra]


def test_nano_through_the_cli_then_compare(model_dir, tmp_path, capsys) -> None:
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert main(_nano_argv(model_dir, run_a)) == 0
    out = capsys.readouterr().out
    assert "think: overall" in out and "no_think: overall" in out
    results = json.loads((run_a / "results.json").read_text())
    assert results["status"] == "complete" and set(results["modes"]) == {"think", "no_think"}
    assert set(results["modes"]["think"]["summary"]["categories"]) == {"composition", "edit"}
    assert "overall" in results["delta_think_minus_no_think"]
    assert (run_a / "think" / "edit" / "0000.png").is_file() and (run_a / "no_think" / "manifest.jsonl").is_file()
    page = (run_a / "report.html").read_text()
    assert "Δ think − no_think" in page and "data:image/png;base64," in page and 'href="think/edit/0000.png"' in page
    assert page.index("<h2>composition") < page.index("<h2>edit")
    assert (run_a / "scores.png").is_file()  # matplotlib is installed in the test environment

    assert main(_nano_argv(model_dir, run_b, "--seed", "5", "--no-think")) == 0
    assert main(["eval", "compare", str(run_a), str(run_b), "--out", str(tmp_path / "cmp")]) == 0
    comparison = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(comparison["modes"]) == ["no_think"]
    assert comparison["modes"]["no_think"]["_prompts"]["common"] == 2
    paired = comparison["modes"]["no_think"]["_paired"]
    assert {c: p["prompts"] for c, p in paired.items()} == {"composition": 1, "edit": 1}
    assert "no_think: B − A per prompt, ± standard error: composition " in capsys.readouterr().out
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "B − A" in page and "beyond 2 s.e." in page


def test_summary_and_report_carry_the_standard_errors_the_scorer_gives(tmp_path, capsys) -> None:
    """Printed and in report.html beside the score they qualify; never a row of their own."""
    from thinkgen.eval.cli import _print_summary
    from thinkgen.eval.report import build_results, write_report, write_results

    summary = {"overall": 0.5, "categories": {"composition": 0.75, "text": 0.25}, "scale": "accuracy",
               "metrics": {"standard_error/composition": 0.25, "standard_error/text": None,
                           "standard_error/overall": None}}
    results = build_results("nano", {"model": "m"}, {"think": {"summary": summary, "errors": []}})
    _print_summary(results, tmp_path)
    assert "think: overall 0.5000 (composition 0.750 ± 0.250, text 0.250)" in capsys.readouterr().out
    write_results(tmp_path, results)
    page = write_report(tmp_path).read_text()
    assert "<td>0.7500 ± 0.2500</td>" in page and "<td>0.2500</td>" in page and "standard_error" not in page


def test_bad_input_gives_one_clear_line(tmp_path, capsys) -> None:
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"tag": "counting", "include": [{"class": "cat"}], "prompt": "cats"}\n')
    assert main(["eval", "geneval", "--data", str(bad), "--out", str(tmp_path / "g")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad} line 1: include[0]: field 'count' must be an integer >= 1, got None"
    assert main(["eval", "risebench", "--data", str(FIXTURES / "risebench" / "data_total.json"), "--out",
                 str(tmp_path / "r"), "--images-dir", str(tmp_path / "missing")]) == 2
    assert "input image folder not found" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path), str(tmp_path)]) == 2
    assert "not an eval run folder" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # nothing is generated before the inputs are checked


def test_judged_run_keeps_partial_results_and_resumes(tmp_path) -> None:
    out = tmp_path / "wise"
    data = ["--data", str(FIXTURES / "wise" / "knowledge.json"), "--no-think", "--judge-retries", "1"]

    def garbage_for_ice(text: str, n: int) -> str:
        return "I cannot grade this." if "ice cube" in text else sensible_judge(text, n)

    with StubJudge(garbage_for_ice) as stub:
        args = eval_args("wise", out, extra=data + ["--judge-url", stub.url, "--judge-model", "stub"])
        results = run_benchmark(args, load_pipeline=tiny_pipeline)
    mode = results["modes"]["no_think"]
    assert results["status"] == "incomplete" and mode["num_scored"] == 5
    assert [e["key"] for e in mode["errors"]] == ["2"] and "stayed malformed after 2 tries" in mode["errors"][0]["error"]
    assert "physics" not in mode["summary"]["categories"] and mode["summary"]["overall"] == pytest.approx(0.85)
    assert (out / "report.html").is_file()

    # The judge goes down after one request: scoring stops, what was judged stays.
    (out / "no_think" / "scores.jsonl").unlink()
    replies = iter([sensible_judge("Aesthetic Quality", 1)])
    with StubJudge(lambda text, n: next(replies, (503, "down"))) as stub:
        args = eval_args("wise", out, extra=data + ["--judge-url", stub.url, "--judge-model", "stub"])
        results = run_benchmark(args, load_pipeline=lambda: pytest.fail("nothing is left to generate"))
    assert results["status"] == "incomplete" and "scoring stopped at '2'" in results["stopped"]
    assert "1 of 6 prompts are scored" in results["stopped"] and results["modes"]["no_think"]["num_scored"] == 1

    with StubJudge(sensible_judge) as stub:
        args = eval_args("wise", out, extra=data + ["--judge-url", stub.url, "--judge-model", "stub"])
        results = run_benchmark(args, load_pipeline=lambda: pytest.fail("nothing is left to generate"))
    assert results["status"] == "complete" and len(stub.requests) == 5  # only the unscored prompts
    assert results["modes"]["no_think"]["summary"]["metrics"]["complete"]


def test_judge_down_through_the_cli(tmp_path, capsys, model_dir) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["eval", "imgedit", "--model", str(model_dir), "--data", str(FIXTURES / "imgedit" / "basic_edit.json"),
            "--images-dir", str(FIXTURES / "imgedit" / "images"), "--rubrics",
            str(FIXTURES / "imgedit" / "judge_rubrics.json"), "--out", str(tmp_path), "--no-think", "--limit", "2",
            "--judge-url", f"http://127.0.0.1:{port}/v1", "--judge-model", "m", "--judge-retries", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the run is incomplete: scoring stopped at '7'" in err and "cannot reach the judge" in err
    assert (tmp_path / "no_think" / "7.png").is_file() and (tmp_path / "no_think" / "9.png").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "incomplete"
