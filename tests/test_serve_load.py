"""The server under load, on a live uvicorn: a full queue answers 429, a client that leaves stops costing
compute, compatible requests are batched and each still gets the image of its own prompt and seed."""

import threading
import time

import httpx
import pytest

from serve_support import GatedPipeline, LiveServer, decode_png, max_pixel_difference, tiny_settings
from thinkgen.serve.app import create_app
from tiny_pipeline import build_tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture
def gated(pipe):
    gated = GatedPipeline(pipe)
    yield gated
    gated.gate.set()  # never leave the worker blocked


def _metrics(url: str) -> dict:
    return httpx.get(url + "/metrics", params={"format": "json"}).json()


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _post_in_thread(url: str, body: dict, results: dict, key: str, timeout_s: float = 60.0) -> threading.Thread:
    def run() -> None:
        try:
            results[key] = httpx.post(url + "/v1/images/generations", json=body, timeout=timeout_s)
        except httpx.TimeoutException as err:
            results[key] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _block_worker(server: LiveServer, gated: GatedPipeline, results: dict) -> threading.Thread:
    """Close the gate and send one request, so that the worker is busy and everything after it queues."""
    gated.gate.clear()
    gated.entered.clear()
    thread = _post_in_thread(server.url, {"prompt": "blocker", "think": True, "seed": 0}, results, "blocker")
    assert gated.entered.wait(20)
    return thread


def test_a_full_queue_answers_429_with_retry_after(gated):
    with LiveServer(create_app(tiny_settings(max_queue_size=2), lambda s: gated)) as server:
        results: dict = {}
        threads = [_block_worker(server, gated, results)]
        queued = {f"q{k}": {"prompt": f"q{k}", "think": True, "seed": k} for k in range(2)}
        threads += [_post_in_thread(server.url, body, results, key) for key, body in queued.items()]
        _wait_for(lambda: _metrics(server.url)["queue_depth"] == 2)
        r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "one too many"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        gated.gate.set()
        for thread in threads:
            thread.join(60)
        assert [results[k].status_code for k in ("blocker", "q0", "q1")] == [200, 200, 200]
        assert _metrics(server.url)["jobs"]["rejected"] == 1


def test_clients_that_leave_cost_no_compute(gated):
    settings = tiny_settings(max_inference_steps=1000)
    with LiveServer(create_app(settings, lambda s: gated)) as server:
        results: dict = {}
        blocker = _block_worker(server, gated, results)
        # Queued, then gone: a plain request whose client times out, and a stream closed after its headers.
        leaver = _post_in_thread(server.url, {"prompt": "leaving", "think": True}, results, "leaver", timeout_s=0.5)
        with httpx.stream("POST", server.url + "/v1/images/generations",
                          json={"prompt": "streaming", "think": True, "stream": True}) as stream:
            assert stream.status_code == 200
            _wait_for(lambda: _metrics(server.url)["queue_depth"] == 2)
        leaver.join(10)
        assert isinstance(results["leaver"], httpx.TimeoutException)
        _wait_for(lambda: _metrics(server.url)["jobs"].get("cancelled", 0) == 2)
        assert _metrics(server.url)["queue_depth"] == 0
        gated.gate.set()
        blocker.join(60)
        assert results["blocker"].status_code == 200
        assert gated.calls == [1]  # the two cancelled requests never reached the pipeline

        # Running, then gone: the call is abandoned at the next denoising step.
        steps_before = gated.steps_run
        with httpx.stream("POST", server.url + "/v1/images/generations",
                          json={"prompt": "long", "num_inference_steps": 1000, "stream": True}) as stream:
            for line in stream.iter_lines():
                if "image_generation.progress" in line:
                    break
        _wait_for(lambda: _metrics(server.url)["jobs"].get("cancelled", 0) == 3)
        assert gated.steps_run - steps_before < 1000
        assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_a_request_past_its_timeout_answers_504(gated):
    with LiveServer(create_app(tiny_settings(request_timeout_s=0.5), lambda s: gated)) as server:
        results: dict = {}
        blocker = _block_worker(server, gated, results)
        r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "late"}, timeout=10)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        gated.gate.set()
        blocker.join(60)


def _queue_behind_blocker(server: LiveServer, gated: GatedPipeline, bodies: dict[str, dict]) -> dict:
    """Send ``bodies`` while the worker is blocked, then let them all run; the answers by key."""
    results: dict = {}
    threads = [_block_worker(server, gated, results)]
    threads += [_post_in_thread(server.url, body, results, key) for key, body in bodies.items()]
    _wait_for(lambda: _metrics(server.url)["queue_depth"] == len(bodies))
    gated.gate.set()
    for thread in threads:
        thread.join(60)
    return results


def test_compatible_requests_are_batched_and_each_gets_its_own_image(gated, pipe):
    batchable = {f"b{k}": {"prompt": p, "seed": k, "n": 2}
                 for k, p in enumerate(("a red circle", "two blue squares", "one star"))}
    others = {
        "big": {"prompt": "a red circle", "seed": 0, "n": 2, "size": "32x32"},  # another size: another call
        "think": {"prompt": "one star", "seed": 2, "think": True},  # thinking never batches
    }
    with LiveServer(create_app(tiny_settings(), lambda s: gated)) as server:
        results = _queue_behind_blocker(server, gated, {**batchable, **others})
        assert [results[k].json()["batch_size"] for k in others] == [1, 1]
        for key, body in batchable.items():
            answer = results[key].json()
            assert answer["batch_size"] == 3, answer
            direct = pipe(body["prompt"], num_images_per_prompt=2, seed=body["seed"])
            for item, expected in zip(answer["data"], direct.images):
                assert item["seed"] == body["seed"] and item["revised_prompt"] == body["prompt"]
                # Batched rows differ from a single call by float rounding only.
                assert max_pixel_difference(decode_png(item["b64_json"]), expected) <= 1
        assert sorted(gated.calls) == [1, 1, 1, 3]  # the blocker, big, think, and the batch
        assert _metrics(server.url)["batch_sizes"] == {"1": 3, "3": 1}


def test_a_bad_request_in_a_batch_fails_alone(gated):
    bodies = {"good0": {"prompt": "a red circle", "seed": 0}, "bad": {"prompt": "bad <|im_end|> prompt"},
              "good1": {"prompt": "one star", "seed": 1}}
    with LiveServer(create_app(tiny_settings(), lambda s: gated)) as server:
        results = _queue_behind_blocker(server, gated, bodies)
        assert results["bad"].status_code == 400 and "chat-control" in results["bad"].json()["error"]["message"]
        assert [results[k].status_code for k in ("good0", "good1")] == [200, 200]
        assert _metrics(server.url)["jobs"] == {"invalid": 1, "ok": 3}
