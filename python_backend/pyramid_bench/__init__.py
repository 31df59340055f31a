"""Measuring a Pyramid MoA server, outside the server package.

* ``perf``: load tests with perf_analyzer and genai-perf (``scripts/perf.py``, ``make perf``): the runner,
  the rounds, the summaries and the targets.
* ``floor``: the bare-BLS floor, a Triton Python model (``deploy/templates/floor``, added to a perf
  deployment by ``perf.add_floor``) that makes exactly the router's engine calls and nothing else: the
  yardstick of the router's own work. The stub imports it through the model's ``python_path``, as it
  imports ``pyramid_triton``.
* ``soak``: many clients for minutes against the replay profile (``scripts/soak.py``, ``make soak``).
* ``ab_floor``: a quick A/B of a code change against the floor (``scripts/ab_floor.py``).
"""
