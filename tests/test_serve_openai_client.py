"""The server as a user calls it: the official ``openai`` client against a live uvicorn on loopback."""

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from serve_support import API_KEY, LiveServer, decode_png, free_port, png_bytes, tiny_settings
from thinkgen.serve.app import create_app
from tiny_pipeline import build_tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def server(pipe):
    with LiveServer(create_app(tiny_settings(api_key=API_KEY), lambda settings: pipe)) as server:
        yield server


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        yield client


def test_generate(client, pipe):
    response = client.images.generate(prompt="a red circle", n=2, size="16x16", response_format="b64_json",
                                      extra_body={"seed": 5})
    assert len(response.data) == 2 and response.size == "16x16"
    image = response.data[0]
    assert image.revised_prompt == "a red circle"
    assert decode_png(image.b64_json).tobytes() == pipe("a red circle", num_images_per_prompt=2,
                                                         seed=5).images[0].tobytes()


def test_generate_with_thinking_returns_the_reasoning(client):
    response = client.images.generate(prompt="three stars", extra_body={"think": True, "seed": 2})
    image = response.data[0]
    assert image.model_extra["thought"] is True and isinstance(image.model_extra["reasoning"], str)
    assert image.revised_prompt != "three stars"  # the MLLM's own instruction


def test_edit_one_image_and_several(client):
    response = client.images.edit(image=("scene.png", png_bytes((24, 16)), "image/png"), prompt="make it blue")
    assert decode_png(response.data[0].b64_json).size == (24, 16)
    images = [(f"{k}.png", png_bytes((16, 16), c), "image/png") for k, c in enumerate(("red", "green"))]
    response = client.images.edit(image=images, prompt="put them side by side", size="16x16", n=2)
    assert len(response.data) == 2


def test_streaming_thinking_then_the_image(client):
    events = list(client.images.generate(prompt="two circles", stream=True, extra_body={"think": True, "seed": 3}))
    types = [event.type for event in events]
    assert types[0] == "image_generation.reasoning.delta" and types[-1] == "image_generation.completed"
    assert decode_png(events[-1].b64_json).size == (16, 16)


def test_errors_reach_the_client_as_openai_errors(server, client):
    with pytest.raises(openai.BadRequestError, match="'url' is not supported"):
        client.images.generate(prompt="x", response_format="url")
    with pytest.raises(openai.BadRequestError, match="unknown parameter: 'style'"):
        client.images.generate(prompt="x", style="vivid")
    with pytest.raises(openai.BadRequestError, match="cannot read"):
        client.images.edit(image=("x.png", b"\x89PNG broken", "image/png"), prompt="x")
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as intruder:
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            intruder.images.generate(prompt="x")


def test_thinkgen_serve_command(pipe, tmp_path):
    """`thinkgen serve` loads a saved model in its lifespan and answers on loopback."""
    pipe.save_pretrained(tmp_path / "model")
    port = free_port()
    command = [sys.executable, "-m", "thinkgen.cli", "serve", "--model", str(tmp_path / "model"), "--port", str(port),
               "--max-thinking-tokens", "4", "--max-instruction-tokens", "4"]
    env = {**os.environ, "THINKGEN_API_KEY": API_KEY, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        with openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0) as client:
            response = client.images.generate(prompt="a red circle", extra_body={"think": True, "seed": 0})
        assert decode_png(response.data[0].b64_json).size == (16, 16)
    finally:
        process.terminate()
        process.wait(30)
    assert "Application startup complete" in process.stderr.read()
