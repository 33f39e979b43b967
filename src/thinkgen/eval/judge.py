"""A judge for benchmarks scored by a multimodal LLM: any OpenAI-compatible chat completions endpoint.

The client posts ``{"model", "messages", "temperature", "max_tokens"}`` to ``<url>/chat/completions``, the
images as base64 PNG data URLs in ``image_url`` parts, and hands the answer text to a parser. It retries
on network errors, HTTP 429/5xx and answers the parser rejects (a judge sampled at temperature 0 still
sometimes breaks its format), waiting ``retry_wait_s · 2^attempt`` between tries. Then it fails clearly:

* :class:`JudgeUnavailable`: the endpoint cannot be reached or keeps failing (stop scoring: nothing else
  would get through either);
* :class:`JudgeAnswerError`: the answers stayed malformed (skip this sample, keep going). It is a
  ``ValueError`` so scoring loops record it per sample.

Example:
    >>> judge = JudgeClient(JudgeConfig("http://127.0.0.1:8000/v1", "qwen2.5-vl-72b"))
    >>> judge.ask("Rate the image 1-5. Answer 'Score: N'.", [image], lambda t: parse_labelled_scores(t, ["Score"], 1, 5))
    {'Score': 4.0}
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from PIL import Image

logger = logging.getLogger(__name__)

T = TypeVar("T")
API_KEY_ENV = "THINKGEN_JUDGE_API_KEY"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeUnavailable(RuntimeError):
    """The judge endpoint cannot be reached or keeps failing."""


class JudgeAnswerError(ValueError):
    """The judge's answers did not parse after every retry; ``answer`` holds the last one."""

    def __init__(self, message: str, answer: str) -> None:
        super().__init__(message)
        self.answer = answer


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how patiently to ask it.

    Attributes:
        url: base URL of the OpenAI-compatible API (``http://host:port/v1``); a URL already ending in
            ``/chat/completions`` is used as is.
        model: the model name the endpoint serves.
        api_key: sent as ``Authorization: Bearer``; default: the ``THINKGEN_JUDGE_API_KEY`` environment
            variable, else none.
        timeout_s: per request.
        max_retries: tries after the first one, for each failure kind.
        retry_wait_s: wait before the first retry; doubles after each.
        max_tokens: answer budget.
        temperature: sampling temperature (0: as deterministic as the endpoint allows).
    """

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 3
    retry_wait_s: float = 1.0
    max_tokens: int = 1024
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"judge url {self.url!r} must start with http:// or https://")
        if not self.model:
            raise ValueError("the judge needs a model name (--judge-model)")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.retry_wait_s < 0:
            raise ValueError(
                f"max_retries={self.max_retries}, timeout_s={self.timeout_s}, retry_wait_s={self.retry_wait_s}: "
                "need max_retries >= 0, timeout_s > 0, retry_wait_s >= 0"
            )

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def image_data_url(image: Image.Image) -> str:
    """``image`` as a ``data:image/png;base64,…`` URL."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class JudgeClient:
    """Asks an OpenAI-compatible multimodal chat endpoint and parses its answers (see the module docstring).

    Args:
        config: endpoint and retry settings.
        transport: an ``httpx`` transport (tests).
    """

    def __init__(self, config: JudgeConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        api_key = config.api_key or os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=config.timeout_s, headers=headers, transport=transport)
        # Scores are cached under the judge's model name, not its address: a server that moves keeps its cache.
        self.judge_id = config.model

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, attempt: int) -> None:
        time.sleep(self.config.retry_wait_s * 2**attempt)

    def complete(self, text: str, images: Sequence[Image.Image] = (), system: str | None = None) -> str:
        """One answer text for a user turn of ``images`` then ``text``, retrying transport failures.

        Raises:
            JudgeUnavailable: unreachable, an HTTP error, or a reply without an answer text, after retries.
        """
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_data_url(im)}}
                                         for im in images]
        content.append({"type": "text", "text": text})
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens}
        problem = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._wait(attempt - 1)
            try:
                response = self._client.post(self.config.endpoint, json=body)
            except httpx.HTTPError as err:
                problem = f"cannot reach the judge at {self.config.endpoint} ({type(err).__name__}: {err})"
                logger.warning("%s; try %d of %d", problem, attempt + 1, self.config.max_retries + 1)
                continue
            if response.status_code in _RETRY_STATUS:
                problem = f"the judge answered HTTP {response.status_code}: {response.text[:200]}"
                logger.warning("%s; try %d of %d", problem, attempt + 1, self.config.max_retries + 1)
                continue
            if response.status_code != 200:
                # A wrong model name or key does not get better by asking again.
                raise JudgeUnavailable(
                    f"the judge at {self.config.endpoint} answered HTTP {response.status_code}: {response.text[:300]}"
                )
            try:
                answer = response.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                problem = f"the judge's reply is not a chat completion: {response.text[:200]!r}"
                logger.warning("%s; try %d of %d", problem, attempt + 1, self.config.max_retries + 1)
                continue
            if isinstance(answer, str):
                return answer
            problem = f"the judge's reply has no answer text: {response.text[:200]!r}"
        raise JudgeUnavailable(f"{problem} (gave up after {self.config.max_retries + 1} tries)")

    def ask(
        self,
        text: str,
        images: Sequence[Image.Image],
        parse: Callable[[str], T],
        system: str | None = None,
    ) -> T:
        """Ask, and parse the answer with ``parse`` (which raises ``ValueError`` on a malformed one),
        asking again while it does.

        Raises:
            JudgeUnavailable: see :meth:`complete`.
            JudgeAnswerError: every answer was malformed.
        """
        answer = ""
        reason = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._wait(attempt - 1)
            answer = self.complete(text, images, system)
            try:
                return parse(answer)
            except ValueError as err:
                reason = str(err)
                logger.warning("malformed judge answer (%s); try %d of %d", reason, attempt + 1,
                               self.config.max_retries + 1)
        raise JudgeAnswerError(
            f"the judge's answer stayed malformed after {self.config.max_retries + 1} tries ({reason}); "
            f"last answer: {answer[:300]!r}",
            answer,
        )


_NUMBER = r"\**\s*[:：]?\s*\**\s*(-?\d+(?:\.\d+)?)"


def parse_labelled_scores(text: str, labels: Sequence[str], low: float, high: float) -> dict[str, float]:
    """Read ``Label: number`` for every label (case and markdown bold ignored; the last mention wins, as a
    judge may restate the scale before answering).

    Raises:
        ValueError: a label without a number, or a number outside ``[low, high]``.
    """
    scores = {}
    for label in labels:
        found = re.findall(re.escape(label) + r"\s*" + _NUMBER, text, flags=re.IGNORECASE)
        if not found:
            raise ValueError(f"no score for {label!r}")
        value = float(found[-1])
        if not low <= value <= high:
            raise ValueError(f"{label!r} is {value}, outside {low}..{high}")
        scores[label] = value
    return scores


def parse_numbered_yes_no(text: str, count: int) -> list[bool]:
    """Read answers ``1: yes``, ``2: no`` … for questions 1..``count``.

    Raises:
        ValueError: a question left unanswered, or answered other than yes/no.
    """
    answers: dict[int, bool] = {}
    for number, word in re.findall(r"(?m)^\s*\**\s*(\d+)\s*[.:)\-]\s*\**\s*(yes|no)\b", text, flags=re.IGNORECASE):
        answers[int(number)] = word.lower() == "yes"
    missing = [i for i in range(1, count + 1) if i not in answers]
    if missing:
        raise ValueError(f"no yes/no answer for question(s) {missing[:10]}")
    return [answers[i] for i in range(1, count + 1)]
