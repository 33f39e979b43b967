"""``thinkgen serve``: an OpenAI-compatible image server with streamed reasoning, and a web page.

- :mod:`.app`: the app factory (``create_app``) whose lifespan loads the model;
- :mod:`.routes`: ``images`` (``/v1/images/generations``, ``/v1/images/edits``) and ``system`` (``/health``,
  ``/metrics``, the page at ``/``);
- :mod:`.worker`: the bounded queue, request batching and the one thread that runs the model;
- :mod:`.schemas`, :mod:`.deps`, :mod:`.settings`: bodies, dependencies, settings.

Nothing heavy is imported here, so registering the CLI command costs nothing.
"""
