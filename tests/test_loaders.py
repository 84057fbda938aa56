"""Bring-your-own-data loaders on small files written here, good and malformed."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoprank.contract import ArtifactPaths
from shoprank.data.datasets import DataError, save, validate
from shoprank.training.loaders import (
    ESCI_EXAMPLES,
    ESCI_PRODUCTS,
    grades_to_0_3,
    infer_grade_range,
    load_any,
    load_esci,
    load_jsonl,
    load_relevance_csv,
    load_table,
    load_wands,
)
from shoprank.training.synthetic import generate

CROWDFLOWER = """\
id,query,product_title,product_description,median_relevance,relevance_variance
1,grey sofa,Nordvik Grey Sofa,"A deep sofa,
with a newline in the description",4,0
3,grey sofa,Red Table Lamp,,1,0
5,table lamp,Red Table Lamp,,4,0.5
7,table lamp,Red Table Lamp,Another description,3,0
9,table lamp,Oak Desk,A desk,2,0
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


def _by_title(data, title: str) -> int:
    rows = data.catalog[data.catalog["title"] == title]
    assert len(rows) >= 1
    return int(rows["product_id"].iloc[0])


def test_crowdflower_csv(tmp_path):
    data = load_relevance_csv(_write(tmp_path / "train.csv", CROWDFLOWER))
    validate(data)
    # (title, description) identifies a product; the two "Red Table Lamp" rows differ.
    assert len(data.catalog) == 4
    assert data.catalog["product_id"].tolist() == [1, 2, 3, 4]
    assert data.catalog["description"].iloc[0].startswith("A deep sofa,\nwith")
    assert data.catalog["price"].isna().all()
    assert set(data.queries["query"]) == {"grey sofa", "table lamp"}
    assert data.queries["split"].isin(["train", "val", "test"]).all()
    grades = data.judgements.merge(data.queries, on="query_id").merge(data.catalog, on="product_id")
    got = {(r.query, r.title, r.description): r.relevance for r in grades.itertuples()}
    # median_relevance is 1..4: 4 -> 3, 3 -> 2, 2 -> 1, 1 -> 0.
    assert got[("grey sofa", "Nordvik Grey Sofa", data.catalog["description"].iloc[0])] == 3
    assert got[("grey sofa", "Red Table Lamp", "")] == 0
    assert got[("table lamp", "Red Table Lamp", "Another description")] == 2
    assert got[("table lamp", "Oak Desk", "A desk")] == 1


def test_gzipped_home_depot_style_csv(tmp_path):
    text = (
        "id,product_uid,product_title,search_term,relevance\n"
        "1,100,Angle Bracket,angle bracket,3\n"
        "2,100,Angle Bracket,l bracket,2.33\n"
        "3,101,Deck Paint,deck paint,1.67\n"
        "4,102,Wood Screws,deck paint,1\n"
    )
    path = tmp_path / "train.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    data = load_relevance_csv(path)
    # Fractional grades within 1..3: Home Depot's scale, mapped onto 0..3.
    assert sorted(data.judgements["relevance"]) == [0, 1, 2, 3]
    assert load_any(path).judgements.equals(data.judgements)


def test_same_seed_same_split(tmp_path):
    rows = [f"{i},query {i},Product {i},,{1 + i % 4}" for i in range(200)]
    text = "id,query,product_title,product_description,median_relevance\n" + "\n".join(rows)
    path = _write(tmp_path / "many.csv", text + "\n")
    a, b = load_relevance_csv(path, seed=3), load_relevance_csv(path, seed=3)
    pd.testing.assert_frame_equal(a.queries, b.queries)
    share = a.queries["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7) and share["test"] == pytest.approx(0.15)
    other = load_relevance_csv(path, seed=4)
    assert not other.queries["split"].equals(a.queries["split"])


def test_grade_scales():
    assert infer_grade_range(np.array([1.0, 2.0, 4.0])) == (1.0, 4.0)
    assert infer_grade_range(np.array([1.0, 2.0]), "median_relevance") == (1.0, 4.0)
    assert infer_grade_range(np.array([0.0, 2.0, 3.0])) == (0.0, 3.0)
    assert infer_grade_range(np.array([1.0, 2.33, 3.0])) == (1.0, 3.0)
    assert grades_to_0_3(np.array([1, 2, 3, 4]), (1, 4)).tolist() == [0, 1, 2, 3]
    assert grades_to_0_3(np.array([1, 1.33, 1.67, 2, 2.33, 2.67, 3]), (1, 3)).tolist() == [
        0,
        0,
        1,
        2,
        2,
        3,
        3,
    ]


@pytest.mark.parametrize(
    ("text", "row", "column", "what"),
    [
        ("query,product_title,relevance\nsofa,A,3\nsofa,B,abc\n", 2, "relevance", "not a number"),
        ("query,product_title,relevance\nsofa,A,3\nsofa,B,\n", 2, "relevance", "not a number"),
        ("query,product_title,relevance\nsofa,A,3\nsofa,B,7\n", 2, "relevance", "outside 0..4"),
        ("query,product_title,relevance\nsofa,A,3\n  ,B,2\n", 2, "query", "empty query"),
    ],
)
def test_malformed_rows_name_file_row_and_column(tmp_path, text, row, column, what):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as err:
        load_relevance_csv(path)
    message = str(err.value)
    assert str(path) in message
    assert f"data row {row} (1-based, header excluded)" in message
    assert f"column '{column}'" in message and what in message
    assert (err.value.row, err.value.column) == (row, column)


def test_out_of_range_for_an_explicit_scale(tmp_path):
    path = _write(tmp_path / "r.csv", "query,product_title,relevance\na,A,1\nb,B,0\n")
    with pytest.raises(DataError, match=r"data row 2 .*column 'relevance': grade '0' is outside"):
        load_relevance_csv(path, grade_range=(1, 3))


def test_missing_file_and_missing_column(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_relevance_csv(tmp_path / "nope.csv")
    path = _write(tmp_path / "cols.csv", "query,product_title\nsofa,A\n")
    with pytest.raises(DataError, match=r"cols.csv: missing column 'relevance'") as err:
        load_relevance_csv(path)
    assert err.value.column == "relevance"
    with pytest.raises(DataError, match="file or folder not found"):
        load_any(tmp_path / "missing")


def test_jsonl_table(tmp_path):
    path = _jsonl(
        tmp_path / "j.jsonl",
        [
            {"query": "sofa", "title": "Grey Sofa", "relevance": 3, "product_id": "B01",
             "brand": "Nordvik", "category": "Furniture > Sofas", "price": 499.0},
            {"query": "sofa", "title": "Oak Desk", "relevance": 0, "product_id": "B02",
             "split": "test"},
            {"query": "desk", "title": "Oak Desk", "relevance": "2", "product_id": "B02",
             "split": "val"},
        ],
    )  # fmt: skip
    data = load_jsonl(path)
    validate(data)
    assert data.catalog["product_id"].tolist() == [1, 2]  # string ids -> 1, 2, ...
    sofa = data.catalog.iloc[0]
    assert (sofa["brand"], sofa["category"], sofa["price"]) == ("Nordvik", "Furniture > Sofas", 499)
    assert np.isnan(data.catalog["price"].iloc[1])
    assert data.catalog["description"].tolist() == ["", ""]
    # A query takes the first split its rows give.
    assert data.queries.set_index("query")["split"].to_dict() == {"sofa": "test", "desk": "val"}
    assert data.judgements["relevance"].tolist() == [3, 0, 2]
    assert load_any(path).judgements.equals(data.judgements)


def test_jsonl_errors_name_the_line(tmp_path):
    good = json.dumps({"query": "sofa", "title": "A", "relevance": 3})
    path = _write(tmp_path / "bad.jsonl", f"{good}\n\n{{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl: line 3: invalid JSON"):
        load_jsonl(path)
    path = _jsonl(
        tmp_path / "grade.jsonl",
        [{"query": "sofa", "title": "A", "relevance": 3}, {"query": "sofa", "title": "B"}],
    )
    with pytest.raises(DataError, match=r"grade.jsonl: line 2, column 'relevance'"):
        load_jsonl(path)
    path = _jsonl(
        tmp_path / "split.jsonl", [{"query": "a", "title": "A", "relevance": 1, "split": "dev"}]
    )
    with pytest.raises(DataError, match=r"line 1, column 'split': split 'dev'"):
        load_jsonl(path)


def test_csv_table_with_numeric_ids_and_duplicates(tmp_path, caplog):
    path = _write(
        tmp_path / "t.csv",
        "query,title,description,relevance,product_id\n"
        "lamp,Lamp,Bright,3,501\n"
        "lamp,Lamp,Bright,2,501\n"
        "lamp,Rug,,0,502\n",
    )
    with caplog.at_level(logging.WARNING, logger="shoprank.training.loaders"):
        data = load_table(path)
    assert data.catalog["product_id"].tolist() == [501, 502]  # numeric ids are kept
    # The repeated pair is averaged (2.5 rounds half up to 3), and the merge is logged.
    assert data.judgements["relevance"].tolist() == [3, 0]
    assert "2 rows judge an already-judged" in caplog.text


def _esci_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    examples = pd.DataFrame(
        {
            "example_id": [0, 1, 2, 3, 4, 5, 6],
            "query": [
                "grey sofa",
                "grey sofa",
                "grey sofa",
                "desk lamp",
                "desk lamp",
                "lamp",
                "sofa",
            ],
            "query_id": [10, 10, 10, 11, 11, 12, 13],
            "product_id": ["B0A", "B0B", "B0C", "B0B", "B0D", "B0E", "B0F"],
            "product_locale": ["us", "us", "us", "us", "us", "us", "jp"],
            "esci_label": ["E", "S", "C", "I", "E", "E", "E"],
            "small_version": [1, 1, 1, 1, 0, 1, 1],
            "large_version": [1] * 7,
            "split": ["train", "train", "train", "test", "test", "train", "train"],
        }
    )
    products = pd.DataFrame(
        {
            "product_id": ["B0A", "B0B", "B0C", "B0E", "B0F"],
            "product_title": ["Grey Sofa", "Brass Lamp", "Sofa Cover", "Lamp", "ソファ"],
            "product_description": ["Comfy.", None, "", "", ""],
            "product_bullet_point": ["Seats 3", "", None, "", ""],
            "product_brand": ["Nordvik", "Lumen", "", None, ""],
            "product_color": ["grey", "", "", "", ""],
            "product_locale": ["us", "us", "us", "us", "jp"],
        }
    )
    return examples, products


def test_esci_parquet(tmp_path, caplog):
    examples, products = _esci_frames()
    examples.to_parquet(tmp_path / f"{ESCI_EXAMPLES}.parquet")
    products.to_parquet(tmp_path / f"{ESCI_PRODUCTS}.parquet")
    with caplog.at_level(logging.INFO, logger="shoprank.training.loaders"):
        data = load_esci(
            tmp_path / f"{ESCI_EXAMPLES}.parquet", tmp_path / f"{ESCI_PRODUCTS}.parquet"
        )
    validate(data)
    assert "1 of 7 example rows left out" in caplog.text  # the jp row
    assert "1 judged products are not in the product table" in caplog.text  # B0D
    assert sorted(data.queries["query_id"]) == [10, 11, 12]  # ESCI's ids are kept
    assert data.queries.set_index("query_id").loc[11, "split"] == "test"
    assert data.queries["split"].isin(["train", "val"]).sum() == 2
    sofa = data.catalog.iloc[0]
    assert (sofa["title"], sofa["description"], sofa["brand"], sofa["color"]) == (
        "Grey Sofa",
        "Comfy. Seats 3",
        "Nordvik",
        "grey",
    )
    assert data.catalog["title"].tolist()[-1] == ""  # B0D has no product row
    labels = data.judgements.merge(data.catalog, on="product_id")
    assert labels.set_index(["query_id", "title"])["relevance"].to_dict() == {
        (10, "Grey Sofa"): 3,
        (10, "Brass Lamp"): 2,
        (10, "Sofa Cover"): 1,
        (11, "Brass Lamp"): 0,
        (11, ""): 3,
        (12, "Lamp"): 3,
    }
    small = load_esci(
        tmp_path / f"{ESCI_EXAMPLES}.parquet",
        tmp_path / f"{ESCI_PRODUCTS}.parquet",
        small_version=True,
    )
    assert len(small.judgements) == 5
    assert load_any(tmp_path).judgements.equals(data.judgements)


def test_esci_csv_bad_label(tmp_path):
    examples, products = _esci_frames()
    examples.loc[4, "esci_label"] = "X"
    examples.to_csv(tmp_path / "ex.csv", index=False)
    products.to_csv(tmp_path / "pr.csv", index=False)
    with pytest.raises(DataError, match=r"ex.csv: data row 5 .*column 'esci_label': unknown label"):
        load_esci(tmp_path / "ex.csv", tmp_path / "pr.csv")


def _write_wands(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    query = (
        "query_id\tquery\tquery_class\n"
        "0\tsalon chair\tMassage Chairs\n1\tvelvet sofa\tSofas\n2\tunlabelled\t\n"
    )
    product = (
        "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description"
        "\tproduct_features\trating_count\taverage_rating\treview_count\n"
        "0\tsalon chair deluxe\tMassage Chairs\tFurniture / Office Furniture / Chairs\tA chair."
        "\tcolor : black|material : vinyl\t3.0\t4.5\t2.0\n"
        "1\tblue velvet sofa\tSofas\tFurniture / Living Room Furniture / Sofas\t"
        "\tdsprimarycolor : blue|upholsterymaterial:velvet\t\t\t\n"
        "2\tgarden gnome\t\t\tA gnome.\t\t\t\t\n"
    )
    label = (
        "id\tquery_id\tproduct_id\tlabel\n"
        "0\t0\t0\tExact\n1\t0\t1\tIrrelevant\n2\t1\t1\tExact\n3\t1\t0\tPartial\n"
    )
    files = [folder / "query.csv", folder / "product.csv", folder / "label.csv"]
    for path, text in zip(files, (query, product, label), strict=True):
        _write(path, text)
    return files


def test_wands(tmp_path):
    files = _write_wands(tmp_path / "WANDS" / "dataset")
    data = load_wands(*files)
    validate(data)
    assert data.catalog["product_id"].tolist() == [0, 1, 2]
    assert data.catalog["category"].tolist() == [
        "Furniture > Office Furniture > Chairs",
        "Furniture > Living Room Furniture > Sofas",
        "",
    ]
    assert data.catalog["color"].tolist() == ["black", "blue", ""]
    assert data.catalog["material"].tolist() == ["vinyl", "velvet", ""]
    assert data.queries["query_id"].tolist() == [0, 1, 2]  # the unlabelled query is kept
    grades = data.judgements.set_index(["query_id", "product_id"])["relevance"].to_dict()
    assert grades == {(0, 0): 3, (0, 1): 0, (1, 1): 3, (1, 0): 2}
    assert load_any(tmp_path / "WANDS").judgements.equals(data.judgements)
    custom = load_wands(*files, label_grades={"Exact": 3, "Partial": 1, "Irrelevant": 0})
    assert custom.judgements["relevance"].tolist() == [3, 0, 3, 1]


def test_wands_bad_label_and_id(tmp_path):
    files = _write_wands(tmp_path)
    _write(files[2], "id\tquery_id\tproduct_id\tlabel\n0\t0\t0\tExact\n1\t0\t1\tMaybe\n")
    with pytest.raises(
        DataError, match=r"label.csv: data row 2 .*column 'label': unknown label 'Maybe'"
    ):
        load_wands(*files)
    _write(files[2], "id\tquery_id\tproduct_id\tlabel\n0\tq0\t0\tExact\n")
    with pytest.raises(DataError, match=r"label.csv: data row 1 .*column 'query_id'"):
        load_wands(*files)


def test_load_any_reads_a_saved_shop_and_rejects_unknowns(tmp_path):
    data = generate("tiny", seed=0)
    save(data, ArtifactPaths(tmp_path / "run"))
    for folder in (tmp_path / "run", ArtifactPaths(tmp_path / "run").data):
        back = load_any(folder)
        assert back.events is not None and len(back.catalog) == len(data.catalog)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known data set found"):
        load_any(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown format"):
        load_any(tmp_path / "run", fmt="xml")


LATIN1 = (
    "query,product_title,product_description,median_relevance\n"
    "café crème,Machine à café Crème 1.5 l,Café noir et crème fraîche,4\n"
    'café crème,"Théière en fonte 0,8 l",Thé vert,1\n'
    "crème brûlée,Set à crème brûlée (4 ramequins),Chalumeau inclus,4\n"
)


def test_latin1_file_is_detected_and_read(tmp_path, caplog):
    path = tmp_path / "export.csv"
    path.write_bytes(LATIN1.encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="shoprank.training.loaders"):
        data = load_any(path)
    validate(data)
    assert "Machine à café Crème 1.5 l" in set(data.catalog["title"])
    assert "crème brûlée" in set(data.queries["query"])
    assert any("not UTF-8" in r.getMessage() for r in caplog.records)
    # The same file read as the encoding the user names, without a guess logged.
    caplog.clear()
    named = load_any(path, encoding="cp1252")
    assert list(named.catalog["title"]) == list(data.catalog["title"])
    # (a CLI test run earlier may have left the package's logger at INFO: warnings only)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_utf8_with_bom_and_gzip(tmp_path):
    path = tmp_path / "export.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + LATIN1.encode("utf-8"))
    data = load_any(path)
    assert "Set à crème brûlée (4 ramequins)" in set(data.catalog["title"])


def test_wrong_or_unknown_encoding_is_one_clear_error(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(LATIN1.encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid utf-8 text .*--data-encoding"):
        load_any(path, encoding="utf-8")
    with pytest.raises(DataError, match="unknown encoding"):
        load_any(path, encoding="klingon-8")


def test_cli_reports_a_data_error_in_one_line(tmp_path, capsys):
    from shoprank.training.crossval import main

    path = tmp_path / "export.csv"
    path.write_bytes(LATIN1.encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(path), "--data-encoding", "utf-8", "--out", str(tmp_path / "cv")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "export.csv" in err[0]


def test_undecodable_cp1252_bytes_fall_back_to_latin1(tmp_path, caplog):
    """Bytes Windows-1252 leaves undefined (0x81, 0x8d, 0x8f, 0x90, 0x9d) beside accented
    Latin-1 text: the file is read as Latin-1 and the accents come out right."""
    text = (
        "query,product_title,product_description,median_relevance\n"
        "négligé,Négligé en soie,Soie véritable \x81,4\n"
        "bureau,Bureau en chêne \x8d,Été \x8f\x90,3\n"
        "bureau,Lampe à poser,Laiton \x9d,1\n"
    )
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="shoprank.training.loaders"):
        data = load_any(path)
    validate(data)
    assert set(data.catalog["title"]) == {
        "Négligé en soie",
        "Bureau en chêne \x8d",
        "Lampe à poser",
    }
    assert "Été \x8f\x90" in set(data.catalog["description"])
    assert set(data.queries["query"]) == {"négligé", "bureau"}
    assert any("reading it as latin-1" in r.getMessage() for r in caplog.records)


def test_windows_1252_is_preferred_where_it_decodes(tmp_path):
    """The euro sign and curly quotes are Windows-1252 bytes that Latin-1 would read as
    control characters."""
    text = "query,product_title,relevance\nthé,Théière \x93Nara\x94 à 25 €,3\n"
    path = tmp_path / "export.csv"
    path.write_bytes(text.replace("\x93", "“").replace("\x94", "”").encode("cp1252"))
    assert load_any(path).catalog["title"].tolist() == ["Théière “Nara” à 25 €"]
