"""`data.normalize`: the `news` cleaner, one row per AG News artefact, and the same cleaning in training,
evaluation, prediction and `lorabudget.load`."""

from __future__ import annotations

import json
import typing

import pytest
from conftest import tiny_config, write_config

from lorabudget.data.normalize import NORMALIZERS, clean_news, normalize_texts

CASES = [
    # (what, raw, cleaned)
    ("broken apostrophe entity", "Wall Street#39;s dwindling band", "Wall Street's dwindling band"),
    ("proper apostrophe entity", "Wall Street&#39;s band", "Wall Street's band"),
    ("broken quote entity", "he said quot;nothing quot; today", 'he said "nothing " today'),
    ("proper named entities", "AT&amp;T &quot;deal&quot;", 'AT&T "deal"'),
    ("broken dollar entity", "up #36;5 billion", "up $5 billion"),
    ("escaped dollar", "a \\$5 billion deal", "a $5 billion deal"),
    ("cp1252 dash and quotes", "rates#151;and #147;growth#148;", 'rates-and "growth"'),
    ("backslash line breaks", "Street's dwindling\\band of cynics", "Street's dwindling band of cynics"),
    ("literal newline escapes", "first line\\nsecond line", "first line second line"),
    ("escaped tags", "&lt;b&gt;Update&lt;/b&gt; shares rise", "Update shares rise"),
    ("link tags", 'shares of &lt;A HREF="http://www.investor.reuters.com/FullQuote.aspx?ticker=PSFT.O '
                  'target=/stocks/quickinfo/fullquote"&gt;PSFT.O&lt;/A&gt; fell', "shares of PSFT.O fell"),
    ("urls", "details at http://www.example.com/a?b=1 and www.news.org today", "details at and today"),
    ("dateline with agency", "WASHINGTON (Reuters) - The Fed raised rates", "The Fed raised rates"),
    ("dateline with place and country", "LONDON, England (CNN) -- Markets fell", "Markets fell"),
    ("agency lead after a title", "Oil Climbs (Reuters) Reuters - Oil prices rose", "Oil Climbs Oil prices rose"),
    ("agency tag closing a title", "Stocks Rally (AP)", "Stocks Rally"),
    ("site credit", "New Chip Ships (PC World) PC World - Intel ships", "New Chip Ships Intel ships"),
    ("curly quotes", "\u201cWe\u2019re ready,\u201d he said", "\"We're ready,\" he said"),
    ("repeated spaces", "  too    many\tspaces \n here ", "too many spaces here"),
    ("detached apostrophe", "Here #39;s a model", "Here's a model"),
    ("double backslash line break", "Desktop Search\\\\Bob Rosenschein", "Desktop Search Bob Rosenschein"),
    ("dated dateline with a source", "Giant DECEMBER 16, 2004 (COMPUTERWORLD) - Microsoft bought",
     "Giant Microsoft bought"),
    ("dated dateline", "Cuts CHICAGO Sept. 17, 2004 - Struggling to", "Cuts Struggling to"),
    ("words that begin like a month kept", "Market Decision (AP) - Stocks", "Market Decision Stocks"),
    ("plain text untouched", "Apple unveils a new phone in Cupertino", "Apple unveils a new phone in Cupertino"),
    ("parenthesised non-agency kept", "Intel (NASDAQ: INTC) rose", "Intel (NASDAQ: INTC) rose"),
    ("capitalised words before a dash kept", "ROUNDUP - Stocks rise", "ROUNDUP - Stocks rise"),
]


@pytest.mark.parametrize("raw, cleaned", [(raw, cleaned) for _, raw, cleaned in CASES],
                         ids=[what for what, _, _ in CASES])
def test_news_cleaner(raw, cleaned):
    assert clean_news(raw) == cleaned
    assert clean_news(cleaned) == cleaned  # idempotent: cleaning twice changes nothing


def test_the_config_offers_exactly_the_normalizers():
    from lorabudget.config.schema import DataConfig

    allowed = typing.get_args(DataConfig.model_fields["normalize"].annotation)
    assert set(allowed) == set(NORMALIZERS)
    assert normalize_texts(["a  b"], "none") == ["a  b"]


def test_a_run_normalizes_in_training_and_in_every_reader(tiny_roberta, tmp_path):
    """Training tokenizes cleaned texts, and the reloaded classifier cleans what it is given: a raw text and its
    cleaned form get the same prediction."""
    from conftest import make_texts, write_csv

    import lorabudget
    from lorabudget.cli import main

    rows = [(f"{text} #39;s (Reuters)", label) for text, label in make_texts(120, seed=4)]
    data = write_csv(tmp_path / "d.csv", rows)
    run = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, data, run, optim={"max_steps": 6})
    cfg["data"]["normalize"] = "news"
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    assert "normalize: news" in (run / "config.yaml").read_text()
    clf = lorabudget.load(run)
    raw = ["Stocks#39; rally &lt;b&gt;today&lt;/b&gt; (Reuters)", "WASHINGTON (AP) - the team wins"]
    cleaned = [clean_news(t) for t in raw]
    assert [list(x) for x in clf.tokenize(raw).ids] == [list(x) for x in clf.tokenize(cleaned).ids]
    assert (clf.predict_proba(raw) == clf.predict_proba(cleaned)).all()
    assert json.loads((run / "summary.json").read_text())["finished"]
