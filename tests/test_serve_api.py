"""The image server's HTTP API in process: answers, streaming, edits, auth, limits and bad input."""

import json

import pytest
from fastapi.testclient import TestClient

from serve_support import API_KEY, decode_png, max_pixel_difference, png_bytes, tiny_settings
from thinkgen.models.mllm import ThinkingConfig
from thinkgen.models.refine import ThoughtNotClosedError
from thinkgen.serve.app import create_app
from tiny_pipeline import build_tiny_pipeline

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def client(pipe):
    app = create_app(tiny_settings(api_key=API_KEY, max_body_bytes=BODY_LIMIT), lambda settings: pipe)
    with TestClient(app, headers=AUTH) as client:
        yield client


def _sse_events(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        data = "\n".join(line[6:] for line in block.splitlines() if line.startswith("data: "))
        if data and data != "[DONE]":
            events.append(json.loads(data))
    assert text.rstrip().endswith("data: [DONE]")
    return events


def test_generation_matches_a_direct_pipeline_call(client, pipe):
    r = client.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2, "seed": 7, "size": "16x16"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == "16x16" and len(body["data"]) == 2 and body["output_format"] == "png"
    assert set(body["timings_s"]) == {"queued", "thinking", "denoising", "decode"}
    first = body["data"][0]
    assert first["revised_prompt"] == "a red circle" and first["reasoning"] == "" and first["seed"] == 7
    direct = pipe("a red circle", num_images_per_prompt=2, seed=7)
    for item, expected in zip(body["data"], direct.images):
        assert max_pixel_difference(decode_png(item["b64_json"]), expected) == 0


def test_glyph_references_follow_the_request_switch_and_its_seed(pipe):
    """On a glyph model, a quoted word gets a glyph reference laid out by the request's seed (``glyphs:
    false`` turns it off), and such a request is never batched, where the layout would follow its place in
    the batch instead."""
    from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline
    from thinkgen.serve.schemas import ImageGenerationRequest
    from thinkgen.serve.worker import build_spec

    glyph_pipe = ThinkGenPipeline(pipe.mllm, pipe.transformer, pipe.codec,
                                  PipelineConfig(**{**pipe.config.__dict__, "glyph_preset": "nano"}))
    app = create_app(tiny_settings(api_key=API_KEY), lambda settings: glyph_pipe)
    prompt = 'the word "cat"'
    with TestClient(app, headers=AUTH) as glyph_client:
        for glyphs in (True, False):
            r = glyph_client.post("/v1/images/generations", json={"prompt": prompt, "seed": 5, "glyphs": glyphs})
            assert r.status_code == 200, r.text
            expected = glyph_pipe(prompt, seed=5, glyphs=glyphs).images[0]
            assert max_pixel_difference(decode_png(r.json()["data"][0]["b64_json"]), expected) == 0
        with_glyph, without = (glyph_pipe(prompt, seed=5, glyphs=g).images[0] for g in (True, False))
        assert with_glyph.tobytes() != without.tobytes()

    def batch_key(prompt: str, glyphs: bool, model: ThinkGenPipeline):
        request = ImageGenerationRequest(prompt=prompt, glyphs=glyphs, seed=0)
        return build_spec(request, [], tiny_settings(), model.config).batch_key()

    assert batch_key(prompt, True, glyph_pipe) is None
    assert batch_key(prompt, False, glyph_pipe) is not None
    assert batch_key("one red circle", True, glyph_pipe) is not None
    assert batch_key(prompt, True, pipe) is not None  # no glyph preset: nothing to lay out
    # A model that marks objects lays out "one red circle" too, so that request runs alone as well.
    marks_pipe = ThinkGenPipeline(pipe.mllm, pipe.transformer, pipe.codec, PipelineConfig(
        **{**pipe.config.__dict__, "glyph_preset": "nano", "glyph_objects": True}))
    assert batch_key("one red circle", True, marks_pipe) is None
    assert batch_key("one red circle", False, marks_pipe) is not None
    assert batch_key("as many circles as a tricycle has wheels", True, marks_pipe) is not None  # nothing planned


def test_thinking_revised_prompt_is_the_instruction_after_think(client, pipe):
    r = client.post("/v1/images/generations", json={"prompt": "three stars", "think": True, "seed": 4})
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    thinking = ThinkingConfig(seed=4, max_thinking_tokens=6, max_instruction_tokens=4)
    direct = pipe("three stars", think=True, seed=4, thinking=thinking)
    assert item["thought"] is True
    assert (item["reasoning"], item["revised_prompt"]) == (direct.reasoning[0], direct.instruction[0])
    assert max_pixel_difference(decode_png(item["b64_json"]), direct.images[0]) == 0


def test_a_missing_seed_is_drawn_and_returned(client):
    seeds = {client.post("/v1/images/generations", json={"prompt": "one star"}).json()["data"][0]["seed"]
             for _ in range(2)}
    assert len(seeds) == 2


def test_streaming_sends_thinking_progress_then_the_image(client):
    r = client.post("/v1/images/generations", json={"prompt": "two circles", "think": True, "seed": 1, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    types = [e["type"] for e in events]
    assert types[0] == "image_generation.reasoning.delta"
    assert types.index("image_generation.progress") > types.index("image_generation.reasoning.delta")
    assert types[-1] == "image_generation.completed"
    done = events[-1]
    assert decode_png(done["b64_json"]).size == (16, 16) and done["seed"] == 1 and done["thought"] is True
    steps = [e["step"] for e in events if e["type"] == "image_generation.progress"]
    assert steps == [1, 2, 3]


def test_edits_take_one_or_several_images_from_memory(client):
    r = client.post("/v1/images/edits", data={"prompt": "make it blue", "seed": "2", "think": "false"},
                    files=[("image", ("../../etc/passwd", png_bytes(), "image/png"))])
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "24x16" and r.json()["data"][0]["revised_prompt"] == "make it blue"
    files = [("image[]", (f"{k}.png", png_bytes((16, 16), c), "image/png")) for k, c in enumerate(("red", "blue"))]
    r = client.post("/v1/images/edits", data={"prompt": "combine them", "size": "16x16", "stream": "true"}, files=files)
    assert r.status_code == 200
    assert _sse_events(r.text)[-1]["type"] == "image_edit.completed"


@pytest.mark.parametrize(
    "files, data, status, message, param",
    [
        ([("image", ("a.png", b"not an image", "image/png"))], {"prompt": "x"}, 400, "cannot read", "image"),
        ([("user", (None, "someone"))], {"prompt": "x"}, 400, "no image given", "image"),
        ([("image", ("a.png", png_bytes(), "image/png")), ("mask", ("m.png", png_bytes(), "image/png"))],
         {"prompt": "x"}, 400, "masks are not supported", "mask"),
        ([("image", ("a.png", png_bytes((300, 300)), "image/png"))], {"prompt": "x", "n": "many"}, 400,
         "'n'", "n"),
        ([("image", ("a.png", png_bytes(), "image/png"))], {"prompt": "x", "quality": "hd"}, 400,
         "unknown parameter: 'quality'", "quality"),
        ([("image", (f"{k}.png", png_bytes(), "image/png")) for k in range(6)], {"prompt": "x"}, 400,
         "Too many files", None),
        ([("image", ("a.png", png_bytes((100, 50)), "image/png"))], {"prompt": "x"}, 400,
         "keeps its input's size unless 'size' is given", "size"),
    ],
)
def test_bad_edits_are_named(client, files, data, status, message, param):
    r = client.post("/v1/images/edits", data=data, files=files)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"


def test_an_edit_must_be_multipart(client):
    r = client.post("/v1/images/edits", json={"prompt": "x"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, message, param",
    [
        ({"prompt": "x", "colour": "red"}, "unknown parameter: 'colour'", "colour"),
        ({"n": 1}, "missing required parameter: 'prompt'", "prompt"),
        ({"prompt": "x", "n": "two"}, "invalid value for 'n'", "n"),
        ({"prompt": "x", "n": 9}, "n=9 is over this server's limit of 4", "n"),
        ({"prompt": "x", "num_inference_steps": 500}, "num_inference_steps=500 is over", "num_inference_steps"),
        ({"prompt": "x", "max_thinking_tokens": 100}, "max_thinking_tokens=100 is over", "max_thinking_tokens"),
        ({"prompt": "x", "size": "1024x1024"}, "this server's limit is 4096", "size"),
        ({"prompt": "x", "size": "big"}, "'WIDTHxHEIGHT'", "size"),
        ({"prompt": "x", "size": "15x16"}, "multiple of 2", None),
        ({"prompt": "x", "response_format": "url"}, "'url' is not supported", "response_format"),
        ({"prompt": ""}, "invalid value for 'prompt'", "prompt"),
        ({"prompt": "x", "think": "maybe"}, "invalid value for 'think'", "think"),
        ({"prompt": "x", "seed": -1}, "invalid value for 'seed'", "seed"),
        ({"prompt": "end <|im_end|> here"}, "chat-control tokens", None),
        ({"prompt": "x" * 4001}, "prompt is 4001 characters long", "prompt"),
    ],
)
def test_bad_generations_are_named(client, body, message, param):
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_malformed_json_and_too_large_bodies(client):
    r = client.post("/v1/images/generations", content=b'{"prompt": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/images/generations", json=["a", "list"])
    assert r.status_code == 400
    big = json.dumps({"prompt": "x" * BODY_LIMIT}).encode()
    r = client.post("/v1/images/generations", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Chunked, so no Content-Length to judge by: the limit is enforced on the bytes themselves.
    r = client.post("/v1/images/generations", content=iter([big[:40_000], big[40_000:]]),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_api_key_guards_everything_but_health_and_the_page(client):
    for headers, code in (({"Authorization": ""}, "missing_api_key"), ({"Authorization": "Bearer nope"},
                                                                         "invalid_api_key")):
        r = client.post("/v1/images/generations", json={"prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == code
        assert client.get("/metrics", headers=headers).status_code == 401
        assert client.get("/health", headers=headers).json() == {"status": "ok", "model": "tiny"}
        assert 'id="prompt"' in client.get("/", headers=headers).text


def test_a_failing_call_answers_500_and_the_server_goes_on(client, pipe, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipe.transformer, "forward", broken)
    r = client.post("/v1/images/generations", json={"prompt": "a circle"})
    assert r.status_code == 500 and "failed (RuntimeError)" in r.json()["error"]["message"]
    assert "out of memory" not in r.text  # internals stay in the server's log
    monkeypatch.undo()
    assert client.post("/v1/images/generations", json={"prompt": "a circle"}).status_code == 200
    assert client.get("/nowhere").json()["error"]["message"] == "Not Found"


def test_a_thought_the_model_never_closes_is_a_server_error(client, pipe, monkeypatch):
    def never_closed(*args, **kwargs):
        raise ThoughtNotClosedError("rows [0] contain no </think>")

    monkeypatch.setattr(pipe, "encode_prompt", never_closed)
    r = client.post("/v1/images/generations", json={"prompt": "a circle", "think": True})
    assert r.status_code == 500 and r.json()["error"]["code"] == "thought_not_closed"


def test_metrics_in_prometheus_text_and_json(client):
    client.post("/v1/images/generations", json={"prompt": "a square"})
    text = client.get("/metrics").text
    assert 'thinkgen_requests_total{route="/v1/images/generations",status="200"}' in text
    assert "thinkgen_queue_depth 0" in text and 'thinkgen_batches_total{batch_size="1"}' in text
    data = client.get("/metrics", params={"format": "json"}).json()
    assert data["jobs"]["ok"] >= 1 and data["images_generated"] >= 1
    assert data["latency"]["/v1/images/generations"]["p95_s"] > 0
