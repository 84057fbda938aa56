"""The synthetic shop: determinism, sizes, grades, noise, click model, splits, I/O."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from shoprank.contract import ArtifactPaths
from shoprank.data.datasets import (
    CATEGORY_SEPARATOR,
    LIST_SEPARATOR,
    DataError,
    ShopData,
    load,
    product_text,
    save,
    validate,
)
from shoprank.training import synthetic
from shoprank.training.synthetic import LEAVES, SCALES, generate, generate_with_intents


@pytest.fixture(scope="module")
def tiny() -> tuple[ShopData, pd.DataFrame]:
    return generate_with_intents("tiny", seed=0)


@pytest.fixture(scope="module")
def busy() -> ShopData:
    """Tiny catalog, many more sessions and queries: enough events for click statistics."""
    return generate(replace(SCALES["tiny"], queries=300, sessions=3000), seed=1)


def test_scale_table_meets_the_documented_sizes():
    demo, full, tiny = SCALES["demo"], SCALES["full"], SCALES["tiny"]
    assert demo.products >= 20_000 and demo.queries >= 2_000 and demo.users >= 5_000
    # Every session shows `impressions` products, so this bounds the event count.
    assert demo.sessions * demo.impressions >= 200_000
    for field in ("products", "queries", "users", "sessions"):
        assert getattr(full, field) == 5 * getattr(demo, field)
    assert (tiny.products, tiny.queries, tiny.users) == (300, 60, 50)
    assert tiny.sessions * tiny.impressions >= 3_000
    assert 30 <= len(LEAVES) <= 40
    assert len({lf.department for lf in LEAVES}) >= 8
    assert len(synthetic.brand_names(120)) == len(set(synthetic.brand_names(120))) == 120


def test_tiny_is_valid_at_its_documented_size(tiny):
    data = generate("tiny", seed=3)
    validate(data)
    assert len(data.catalog) == 300
    assert len(data.queries) == 60
    assert len(data.users) == 50
    assert len(data.events) >= 3_000
    assert set(data.events["event_type"]) == {"impression", "click", "add_to_cart", "purchase"}


def test_same_seed_same_tables_other_seed_other_tables(tiny):
    again, _ = generate_with_intents("tiny", seed=0)
    for name, frame in tiny[0].tables().items():
        pd.testing.assert_frame_equal(frame, again.tables()[name])
    other = generate("tiny", seed=1)
    assert not other.catalog["title"].equals(tiny[0].catalog["title"])
    assert not other.queries["query"].equals(tiny[0].queries["query"])


def test_catalog_looks_like_a_shop(tiny):
    cat = tiny[0].catalog
    assert cat["product_id"].is_unique
    assert (cat["category"].str.count(CATEGORY_SEPARATOR) == 2).all()
    assert cat["price"].gt(0).all()
    assert cat["description"].str.count(r"\.").ge(3).all()  # several sentences
    row = cat.iloc[0]
    # The title carries the brand and the attributes.
    for value in (row["brand"], row["color"].title(), row["size"]):
        assert value in row["title"]
    # Leaves hold their own price ranges.
    leaf_of = {lf.path: lf for lf in LEAVES}
    lo = cat["category"].map(lambda c: leaf_of[c].price[0])
    hi = cat["category"].map(lambda c: leaf_of[c].price[1])
    assert ((cat["price"] >= lo - 1) & (cat["price"] <= hi + 1)).all()


def _grade_by_hand(intent: pd.Series, product: pd.Series, catalog: pd.DataFrame) -> int:
    """The documented grading rule, written out independently of the generator."""
    parent = intent["category"].rsplit(CATEGORY_SEPARATOR, 1)[0]
    if intent["kind"] == "code":
        # The named product 3; its series (titles read "Brand Series ...") 2; its brand 1.
        target = catalog.loc[intent["target_id"]]
        if product["category"] != intent["category"] or product["brand"] != target["brand"]:
            return 0
        if product.name == target.name:
            return 3
        return 2 if product["title"].split()[1] == target["title"].split()[1] else 1
    if intent["kind"] == "feature" and product["category"] == intent["category"]:
        return 3 if intent["feature"] in product["description"] else 1
    if product["category"] != intent["category"]:
        same_parent = product["category"].rsplit(CATEGORY_SEPARATOR, 1)[0] == parent
        return 1 if same_parent else 0
    stated = [a for a in ("color", "material", "brand", "size") if intent[a]]
    matched = sum(product[a] == intent[a] for a in stated)
    if matched == len(stated):
        return 3
    return 2 if 2 * matched >= len(stated) else 1


def test_grades_follow_catalog_attributes(tiny):
    data, intents = tiny
    catalog = data.catalog.set_index("product_id")
    judged = data.judgements.merge(intents, on="query_id")
    checked = 0
    for row in judged.itertuples(index=False):
        intent = pd.Series(row._asdict())
        product = catalog.loc[row.product_id]
        assert row.relevance == _grade_by_hand(intent, product, catalog), row
        checked += 1
    assert checked == len(data.judgements)
    # With a tiny catalog nothing hits the 200 cap: every product graded >= 1 is judged.
    for q in intents.head(10).itertuples(index=False):
        expected = {
            pid
            for pid, product in catalog.iterrows()
            if _grade_by_hand(pd.Series(q._asdict()), product, catalog) >= 1
        }
        got = data.judgements.query("query_id == @q.query_id and relevance >= 1")["product_id"]
        assert set(got) == expected
    # ~20 negatives per query.
    zeros = data.judgements[data.judgements["relevance"] == 0].groupby("query_id").size()
    assert zeros.between(10, 20).all()


def test_queries_are_noisy_and_unique(busy):
    queries = busy.queries["query"]
    assert queries.is_unique
    nouns = {n for lf in LEAVES for n in lf.nouns}
    canonical = {lf.nouns[0] for lf in LEAVES}
    synonyms = nouns - canonical
    bare = queries[queries.isin(nouns)]
    assert len(bare) > 0, "partial queries like 'sofa'"
    assert queries.map(lambda q: any(s in q for s in synonyms)).any()
    vocabulary = {w for lf in LEAVES for n in lf.nouns for w in n.split()}
    vocabulary |= {
        w.lower()
        for lf in LEAVES
        for a in (*lf.colors, *lf.materials, *lf.sizes)
        for w in a.split()
    }
    vocabulary |= {b.lower() for b in synthetic.brand_names(SCALES["tiny"].brands)}
    typos = queries[queries.map(lambda q: any(w not in vocabulary for w in q.split()))]
    assert len(typos) >= 5, "typos"
    # Splits by query, about 70/15/15.
    share = busy.queries["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.02)
    assert share["val"] == pytest.approx(0.15, abs=0.02)


def test_clicks_are_position_biased(busy):
    ev = busy.events
    shown = ev[ev["event_type"] == "impression"]["position"].value_counts()
    clicked = ev[ev["event_type"] == "click"]["position"].value_counts()
    ctr = (clicked / shown).fillna(0.0)
    assert ctr[0] > 2 * ctr[9]
    assert sorted(shown.index) == list(range(10))
    # Each session shows positions 0..9 once.
    per_session = ev[ev["event_type"] == "impression"].groupby("session_id")["position"]
    assert (per_session.nunique() == 10).all()


def test_purchases_follow_user_preferences(busy):
    ev = busy.events.merge(busy.catalog[["product_id", "brand"]], on="product_id")
    ev = ev.merge(busy.users[["user_id", "preferred_brands"]], on="user_id")
    ev["match"] = [
        b in p.split(LIST_SEPARATOR)
        for b, p in zip(ev["brand"], ev["preferred_brands"], strict=True)
    ]
    rate = ev.groupby("event_type")["match"].mean()
    assert rate["purchase"] > rate["click"] > rate["impression"]
    assert rate["purchase"] > 1.5 * rate["impression"]
    # Users come back: most have more than one session.
    sessions = busy.events.groupby("user_id")["session_id"].nunique()
    assert (sessions >= 2).mean() > 0.8


def _reclick_rate(events: pd.DataFrame) -> float:
    """Click-through of impressions of a product the shopper clicked in an earlier session."""
    start = events.groupby("session_id")["timestamp"].min()
    imp = events[events["event_type"] == "impression"][["session_id", "user_id", "product_id"]]
    clicks = events[events["event_type"] == "click"][["session_id", "user_id", "product_id"]]
    earlier = imp.merge(clicks, on=["user_id", "product_id"], suffixes=("", "_c"))
    earlier = earlier[earlier["session_id_c"].map(start) < earlier["session_id"].map(start)]
    keys = ["session_id", "product_id"]
    seen = imp.set_index(keys).index.isin(earlier.set_index(keys).index)
    clicked = imp.set_index(keys).index.isin(clicks.set_index(keys).index)
    assert seen.sum() > 100
    return float(clicked[seen].mean())


def test_missions_repeat_queries(busy):
    sessions = (
        busy.events.groupby("session_id")
        .agg(user=("user_id", "first"), query=("query_id", "first"), start=("timestamp", "min"))
        .sort_values(["user", "start"])
    )
    same_user = sessions["user"].eq(sessions["user"].shift())
    repeats = (sessions["query"].eq(sessions["query"].shift()) & same_user).sum()
    # _MISSION_CONTINUE = 0.4 of return visits repeat the previous query; by chance alone
    # (300 queries, a few leaves per shopper) it would be a few percent.
    assert repeats / same_user.sum() > 0.3


def test_shoppers_come_back_to_what_they_clicked(busy, monkeypatch):
    # The same shop without the revisit effect: the first click on each (shopper, product)
    # draws the same random numbers, so only later re-clicks differ.
    monkeypatch.setattr(synthetic, "_REVISIT", 0.0)
    plain = generate(replace(SCALES["tiny"], queries=300, sessions=3000), seed=1)
    assert _reclick_rate(busy.events) > 1.3 * _reclick_rate(plain.events)


def test_events_split_by_session_time(busy):
    ev = busy.events
    start = ev.groupby("session_id").agg(
        start=("timestamp", "min"), split=("split", "first"), user=("user_id", "first")
    )
    assert (ev.groupby("session_id")["split"].nunique() == 1).all()
    assert start["start"].is_monotonic_increasing  # session ids follow time
    by_split = start.groupby("split")["start"]
    assert by_split.max()["train"] <= by_split.min()["val"]
    assert by_split.max()["val"] <= by_split.min()["test"]
    share = start["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.8, abs=0.01)
    assert share["test"] == pytest.approx(0.1, abs=0.01)
    span = start["start"].max() - start["start"].min()
    assert 25 * 86_400 < span <= 30 * 86_400
    # Within a session: impression, then click, cart, purchase, never earlier.
    acts = ev[ev["event_type"] != "impression"].merge(start, left_on="session_id", right_index=True)
    assert (acts["timestamp"] > acts["start"]).all()


def test_save_load_round_trip(tiny, tmp_path):
    data = tiny[0]
    paths = ArtifactPaths(tmp_path / "run")
    save(data, paths)
    back = load(paths)
    for name, frame in data.tables().items():
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), back.tables()[name])
    # Saving without the optional tables removes stale ones.
    save(ShopData(data.catalog, data.queries, data.judgements), paths)
    again = load(paths)
    assert again.users is None and again.events is None
    assert not paths.events.exists()


def test_validate_names_table_row_and_column(tiny):
    data = tiny[0]
    bad = data.judgements.copy()
    bad.loc[5, "product_id"] = 999_999_999
    with pytest.raises(DataError, match=r"judgements: row 5 .*column 'product_id'") as err:
        validate(ShopData(data.catalog, data.queries, bad))
    assert err.value.row == 5 and err.value.column == "product_id"
    wrong_dtype = data.catalog.assign(price=data.catalog["price"].astype(np.float32))
    with pytest.raises(DataError, match="catalog: column 'price' must be float64"):
        validate(ShopData(wrong_dtype, data.queries, data.judgements))
    empty = data.queries.copy()
    empty.loc[2, "query"] = "  "
    with pytest.raises(DataError, match=r"queries: row 2 .*column 'query': empty query"):
        validate(ShopData(data.catalog, empty, data.judgements))
    orphan = data.events.copy()
    click = orphan.index[orphan["event_type"] == "click"][0]
    orphan.loc[click, "position"] = 42
    with pytest.raises(DataError, match="no impression at this position"):
        validate(ShopData(data.catalog, data.queries, data.judgements, data.users, orphan))


def test_product_text_puts_title_first_and_description_last(tiny):
    cat = tiny[0].catalog
    texts = product_text(cat.head(3))
    assert isinstance(texts, list) and len(texts) == 3
    row = cat.iloc[0]
    one = product_text(row)
    assert one == texts[0]
    assert one.startswith(row["title"])
    assert one.endswith(row["description"])
    leaf = row["category"].rsplit(CATEGORY_SEPARATOR, 1)[-1]
    positions = [one.index(v) for v in (f"brand {row['brand']}", leaf, f"color {row['color']}")]
    assert positions == sorted(positions)
    assert product_text({"title": "Lamp", "description": ""}) == "Lamp"


def test_cli_writes_artifacts(tmp_path, capsys):
    assert synthetic.main(["--scale", "tiny", "--seed", "2", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert "catalog=300" in line and "events=" in line
    assert len(load(ArtifactPaths(tmp_path)).catalog) == 300


def test_a_share_of_queries_is_lexical(busy):
    """Model-number and part/feature queries, and sizes written the way shoppers do."""
    from shoprank.core.lexical import is_code, tokenize

    data, intents = generate_with_intents(replace(SCALES["tiny"], queries=300, sessions=300))
    kinds = intents["kind"].value_counts(normalize=True)
    assert kinds["code"] == pytest.approx(0.15, abs=0.02)
    assert kinds["feature"] == pytest.approx(0.10, abs=0.02)
    catalog = data.catalog.set_index("product_id")
    codes = intents[intents["kind"] == "code"].merge(data.queries, on="query_id")
    for row in codes.itertuples(index=False):
        # The query names its product's model number in some spelling; the lexical
        # tokenizer brings every spelling back to the same code token.
        target = catalog.loc[row.target_id]
        model = re.search(r"Model ([A-Z]{2}-\d{4}[A-Z])\.", target["description"]).group(1)
        code = model.replace("-", "").lower()  # "NO-4521B" -> "no4521b"
        assert is_code(code) and code in tokenize(row.query), (row.query, model)
    # Every product has a unique model number, in its description and often its title.
    assert data.catalog["description"].str.contains(r"Model [A-Z]{2}-\d{4}[A-Z]\.").all()
    assert data.catalog["title"].str.contains(r"[A-Z]{2}-\d{4}[A-Z]$").mean() > 0.4
    sized = intents[(intents["kind"] == "attribute") & (intents["size"] != "")]
    spelled = sized.merge(data.queries, on="query_id")["query"]
    assert spelled.str.contains(r"\d (?:inch|cm|l|kg|litre|ml)\b| in\b|\d\"").any()
