"""The leaderboard's output formats, one module each, all from the same ranked boards
(partbench.ranking.model); nothing here ranks.

table     partbench.render.terminal  (rich; fits the console, 80 columns by default)
markdown  partbench.render.markdown
csv/json  partbench.render.tabular
svg       partbench.render.svg       (object against part score)
html      partbench.render.html      (one self-contained page; screenshot via render.browser)

``formats`` is the registry of them (name, renderer, file suffixes); ``publish.write_all``
writes the committed set (Markdown, JSON, SVG, HTML, optionally a PNG). ``formatting`` and
``notes`` hold what every format shares.
"""
