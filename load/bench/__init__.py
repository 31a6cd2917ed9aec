"""``make bench``: an open-model load at rising rates over the suite as ``make start`` runs it,
with the figures issue 7 asks for (see docs/benchmark.md)."""
