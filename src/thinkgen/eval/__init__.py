"""Benchmarks: generation in each benchmark's official layout, scoring, reports.

One module per benchmark, its loader next to its scorer: :mod:`.geneval`, :mod:`.wise`, :mod:`.risebench`,
:mod:`.imgedit`, :mod:`.dpg`, :mod:`.cvtg`, :mod:`.nano`; shared pieces in :mod:`.runner` (generation,
resume, layouts), :mod:`.judge` (OpenAI-compatible judge client) and :mod:`.report` (results, HTML,
charts, comparison). The command line is :mod:`.cli` (``thinkgen eval``).
"""
