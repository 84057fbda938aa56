"""Filters: which products a request allows, parsing the filter inputs, and widening."""

import math

import numpy as np
import pytest

from shoprank import contract
from shoprank.core.ann import DenseConfig, DenseIndex
from shoprank.core.catalog import CatalogIndex
from shoprank.core.filters import Facets, Filters, row_filters
from shoprank.core.ranking import widen
from shoprank.core.requests import InvalidInput


@pytest.fixture
def catalog():
    return CatalogIndex(
        product_ids=np.array([10, 11, 12, 13, 14], np.int64),
        titles=np.array([b"a", b"b", b"c", b"d", b"e"], dtype=object),
        categories=np.array(
            ["Furniture > Sofas", "Furniture > Beds", "Garden > Tools", "furniture > sofas", ""]
        ),
        prices=np.array([100.0, 50.0, np.nan, 300.0, 20.0]),
        in_stock=np.array([True, True, True, False, True]),
    )


def test_allowed_by_each_filter(catalog):
    facets = Facets.of(catalog)
    assert facets.allowed(Filters()) is None  # nothing to filter
    sofas = facets.allowed(Filters(category_prefix="FURNITURE >  sofas"))
    assert sofas.tolist() == [True, False, False, True, False]  # case and spaces ignored
    priced = facets.allowed(Filters(price_min=50, price_max=300))
    assert priced.tolist() == [True, True, False, True, False]  # unknown price never matches
    assert facets.allowed(Filters(in_stock_only=True)).tolist() == [1, 1, 1, 0, 1]
    both = facets.allowed(Filters("furniture", exclude_rows=np.array([0]), in_stock_only=True))
    assert both.tolist() == [False, True, False, False, False]


def test_a_catalog_without_facets_is_all_in_stock_with_unknown_prices():
    bare = CatalogIndex(np.array([1, 2]), np.array([b"x", b"y"], dtype=object))
    facets = Facets.of(bare)
    assert facets.allowed(Filters(in_stock_only=True)).all()
    assert not facets.allowed(Filters(price_max=10)).any()


def test_row_filters_parse_batched_inputs(catalog):
    inputs = {
        contract.CATEGORY_PREFIX.name: np.array([[b"Garden"], [b""]], dtype=object),
        contract.PRICE_MIN.name: np.array([[np.nan], [40]], np.float32),
        contract.EXCLUDE_IDS.name: np.array([[10, 999], [11, contract.PADDING_ID]], np.int64),
        contract.IN_STOCK_ONLY.name: np.array([[False], [True]]),
    }
    first, second = row_filters(inputs, 2, catalog)
    assert first.category_prefix == "Garden" and first.price_min == -math.inf
    assert first.exclude_rows.tolist() == [0] and not first.in_stock_only  # unknown id dropped
    assert second.price_min == 40 and second.in_stock_only and second.exclude_rows.tolist() == [1]
    assert not any(f.active for f in row_filters({}, 3, catalog))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {
                contract.PRICE_MIN.name: np.array([[5.0]]),
                contract.PRICE_MAX.name: np.array([[1.0]]),
            },
            "price range is empty",
        ),
        ({contract.PRICE_MIN.name: np.array([[1.0], [2.0]])}, "one value per row"),
        ({contract.CATEGORY_PREFIX.name: np.array([[b"\xff"]], dtype=object)}, "UTF-8"),
    ],
)
def test_bad_filters_are_invalid_input(catalog, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        row_filters(inputs, 1, catalog)


def test_widen_finds_the_nearest_allowed_products():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense = DenseIndex.build(vectors, DenseConfig(kind="flat"))
    allowed = np.zeros(500, bool)
    allowed[rng.choice(500, 20, replace=False)] = True
    query = vectors[7]
    rows = widen(dense, query, allowed, 5)
    want = np.flatnonzero(allowed)[np.argsort(-(vectors[allowed] @ query))][:5]
    assert rows.tolist() == want.tolist()
    assert widen(dense, query, np.zeros(500, bool), 5).size == 0
