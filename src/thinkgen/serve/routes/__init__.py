"""One router per API family: ``images`` (the OpenAI Images API) and ``system`` (health, metrics, the page)."""
