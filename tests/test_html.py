"""The HTML leaderboard in a real browser: headless Chromium, driven over its DevTools pipe.

The page must load with no console error, sort its rows when a column header is clicked (the
chance row staying beneath the header), show each result's provenance on expansion, mark a
score at chance, and keep a hostile encoder name as text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_leaderboard import HOSTILE, METRIC, N, add, base_items, better

from partbench.metrics.chance import chance_retrieval_ap, chance_top1
from partbench.ranking.boards import build
from partbench.render.browser import Browser, BrowserError
from partbench.render.publish import write_all
from partbench.store import Store

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
_TASKS = ("object-linear", "part-retrieval")  # in the board's column order


@pytest.fixture(scope="module")
def browser():
    try:
        b = Browser(timeout=20)
    except BrowserError as exc:
        print(f"skipping the browser test: {exc}")
        pytest.skip(f"Chromium cannot be started: {exc}")
    yield b
    b.close()


@pytest.fixture
def page_file(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'html.db'}")
    encoders = {  # name -> how much better than the base items; names sort differently from ranks
        "zeta": 0.5,
        HOSTILE_NAME: 0.3,
        "alpha": 0.0,
        HOSTILE: 0.1,
    }
    for i, task in enumerate(("part-retrieval", "object-linear")):
        items = base_items(task, seed=i)
        chance = _chance(task, items["label"])
        for name, amount in encoders.items():
            add(store, name, task, better(items, amount, seed=i + 5), family="contrastive", chance=chance)
        add(store, "guess", task, _guess(task, items["label"]), family="none", chance=chance)
    boards = build(store.runs(), items=store, n_resamples=200)
    (tmp_path / "site").mkdir()
    (path,) = [p for p in write_all(boards, tmp_path / "site", "pytest") if p.suffix == ".html"]
    return path, boards[0]


def _chance(task: str, labels: np.ndarray) -> float:
    """The chance level the task stores: a random ranking's mAP, the largest class's share."""
    if METRIC[task] == "mAP":
        return chance_retrieval_ap(labels)
    return chance_top1(labels, labels)


def _guess(task: str, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Items of an encoder that guesses: right once in six on top-1, a random ranking's APs."""
    rng = np.random.default_rng(3)
    if METRIC[task] == "mAP":
        return {"ap": rng.beta(1, 5, N), "label": labels}
    return {"correct": (np.arange(N) % 6 == 0).astype(np.float64), "label": labels}


def _rows(page) -> list[str]:
    return page.evaluate(
        "Array.from(document.querySelectorAll('table.board > tbody > tr')).map(r => r.dataset.encoder)"
    )


def test_the_page_sorts_shows_provenance_and_keeps_names_as_text(browser, page_file):
    path, board = page_file
    page = browser.open(path.resolve().as_uri())
    page.settle()
    assert page.problems() == []
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.title") == "partbench leaderboard"

    by_rank = [r.encoder.replace("\x01", "") for r in board.rows]  # XML forbids \x01: dropped
    assert _rows(page) == by_rank and by_rank[0] == "zeta"
    # the hostile names are the text of their cells, exactly
    names = page.evaluate(
        "Array.from(document.querySelectorAll('td.encoder summary')).map(s => s.textContent)"
    )
    assert HOSTILE_NAME in names and HOSTILE.replace("\x01", "") in names

    # the chance row: beneath the header, the stored levels, outside the rows that sort
    chance_row = "table.board > thead > tr.chance"
    shown = page.evaluate(
        f"Array.from(document.querySelectorAll('{chance_row} > th')).map(t => t.textContent)"
    )
    assert shown[1] == "chance" and shown[-2:] == [f"{_chance(t, np.arange(N) % 6):.1f}" for t in _TASKS]
    marked = page.evaluate(
        "Array.from(document.querySelectorAll('td.at-chance'))"
        ".map(td => [td.parentElement.dataset.encoder, td.textContent])"
    )
    assert marked and {e for e, _ in marked} == {"guess"} and all("≈" in text for _, text in marked)

    page.click_selector("table.board > thead > tr:first-child > th:nth-child(2)")  # encoder: A to Z
    assert _rows(page) == sorted(by_rank, key=str.lower) != by_rank
    page.click_selector("table.board > thead > tr:first-child > th:nth-child(2)")  # again: Z to A
    assert _rows(page) == sorted(by_rank, key=str.lower, reverse=True)
    assert page.evaluate("document.querySelector('table.board > thead').rows[1].className") == "chance"
    page.click_selector("table.board > thead > tr:first-child > th:nth-child(4)")  # object score: best first
    scores = [r.object_score for r in sorted(board.rows, key=lambda r: -r.object_score)]
    shown = page.evaluate(
        "Array.from(document.querySelectorAll('table.board > tbody > tr > td:nth-child(4)'))"
        ".map(td => Number(td.dataset.sort))"
    )
    assert shown == pytest.approx(scores)

    # provenance on expansion: weights, device, versions, configuration
    page.click_selector("table.board > tbody > tr:first-child > td.encoder summary")
    details = page.evaluate(
        "(() => { const d = document.querySelector("
        "'table.board > tbody > tr:first-child > td.encoder details');"
        " return [d.open, d.querySelector('table.prov').innerText]; })()"
    )
    assert details[0] is True
    assert "sha256:" in details[1] and "cpu" in details[1] and "partbench test" in details[1]
    assert str(N) in details[1]
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    page.settle()
    assert page.problems() == []


def test_a_screenshot_of_the_page(browser, page_file, tmp_path):
    path, _ = page_file
    page = browser.open(path.resolve().as_uri())
    png = page.screenshot(tmp_path / "page.png", width=1000)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    assert width == 1000 and len(data) > 10_000
    assert json.loads(json.dumps(page.problems())) == []
