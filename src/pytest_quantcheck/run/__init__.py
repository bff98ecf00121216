"""The run layer: one job a module, data flowing one way. :mod:`.comparands` says what a check
compares with (the reference, another model, the baseline) at n chunks or tasks; :mod:`.decider`
decides markers' and helpers' checks alike (whole, in looks, Holm); :mod:`.outputs` builds what
the run leaves behind (points, models table, baseline document, reports, a worker's payload).
The models and their measurements are :mod:`pytest_quantcheck.models`'; the session
(:mod:`pytest_quantcheck.session`) ties them together for the plugin."""
