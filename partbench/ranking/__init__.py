"""Ranking, apart from how it is shown: which runs count (``runs``), a board's bootstrap draws
(``draws``), level scores and ranks from paired comparisons (``boards.build``), encoder against
encoder (``comparisons.compare``), and the ranked board as data (``model``), which every output
format in partbench.render reads. Nothing here imports partbench.render.
"""
