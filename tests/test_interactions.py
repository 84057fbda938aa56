"""Bring-your-own interactions: the generic table and RecBole atomic files."""

import json

import numpy as np
import pytest

from shoprank.data.datasets import DataError
from shoprank.training import recommend
from shoprank.training.interactions import load_interactions


def _items(n: int = 12) -> str:
    rows = [f"i{k},Product {k} caf\xe9 {k % 3},Cat > {k % 2}" for k in range(n)]
    return "item_id,title,category\n" + "\n".join(rows) + "\n"


def test_generic_tables_in_latin1_make_ordered_sequences(tmp_path):
    (tmp_path / "items.csv").write_bytes(_items().encode("latin-1"))
    lines = ["user_id,item_id,timestamp", "u1,i3,30", "u1,i1,10", "u1,i2,20", "u1,i1,40"]
    lines += ["u2,i5,1", "u2,nope,2", "u2,i6,3"]
    (tmp_path / "interactions.csv").write_text("\n".join(lines) + "\n")
    data = load_interactions(tmp_path)
    row = {i: r for r, i in enumerate(data.catalog["item_id"])}
    assert data.sequences == [[row["i1"], row["i2"], row["i3"]], [row["i5"], row["i6"]]]
    assert data.dropped == 1  # "nope" is not in the item table
    assert data.catalog["title"].iloc[0] == "Product 0 café 0"


def test_a_bad_timestamp_names_file_row_and_column(tmp_path):
    (tmp_path / "items.csv").write_text(_items())
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,10\nu1,i2,soon\n")
    with pytest.raises(DataError, match=r"interactions.csv: data row 2 .*'timestamp'.*'soon'"):
        load_interactions(tmp_path)


def test_recbole_sequential_benchmark_layout(tmp_path):
    items = "item_id:token\ttitle:token_seq\n" + "".join(f"i{k}\tthing {k}\n" for k in range(6))
    (tmp_path / "shop.item").write_text(items)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (tmp_path / "shop.train.inter").write_text(header + "u1\ti0 i1\ti2\nu2\ti4\ti5\n")
    (tmp_path / "shop.test.inter").write_text(header + "u1\ti0 i1 i2\ti3\n")
    data = load_interactions(tmp_path)
    assert sorted(data.sequences) == [[0, 1, 2, 3], [4, 5]]  # u1's longest sequence


def test_recbole_general_layout_and_missing_files(tmp_path):
    (tmp_path / "a.item").write_text("item_id:token\ttitle:token_seq\nx\tX\ny\tY\n")
    inter = "user_id:token\titem_id:token\ttimestamp:float\nu\ty\t2\nu\tx\t1\n"
    (tmp_path / "a.inter").write_text(inter)
    assert load_interactions(tmp_path, "recbole").sequences == [[0, 1]]
    (tmp_path / "a.item").unlink()
    with pytest.raises(DataError, match=r"expected one \*.item file"):
        load_interactions(tmp_path, "recbole")


def test_cli_trains_and_evaluates_on_your_interactions(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "items.csv").write_text(_items(30))
    lines = ["user_id,item_id,timestamp"]
    for u in range(40):
        start = int(rng.integers(0, 30))
        lines += [f"u{u},i{(start + t) % 30},{t}" for t in range(5)]
    (tmp_path / "interactions.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    recommend.main(["--data", str(tmp_path), "--out", str(out), "--epochs", "1"])
    printed = capsys.readouterr().out
    assert "30 items, 40 shoppers" in printed and "sequential" in printed
    report = json.loads((out / "metrics.json").read_text())["recommendation"]
    assert report["sequential"]["users"] == 40
    assert f"served: {report['served']['name']}" in printed
    assert (out / "model" / "sequential" / "model.safetensors").is_file()
    assert (out / "model" / "covisits.npz").is_file()  # the chosen blend, for conversion
    assert "(served)" in (out / "reports" / "eval.md").read_text()
    assert (out / "reports" / "recommendation.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        recommend.main(["--data", str(tmp_path / "missing"), "--out", str(out)])
    assert exit_info.value.code == 2 and "not found" in capsys.readouterr().err


def test_plain_sequences_layout_ids_only_and_with_items(tmp_path):
    path = tmp_path / "Shop.txt"
    path.write_text("u1 10 11 10 12\n\nu2 12 13\n")
    data = load_interactions(path)
    assert not data.has_text
    assert list(data.catalog["item_id"]) == ["10", "11", "12", "13"]
    assert data.sequences == [[0, 1, 2], [2, 3]]  # oldest first, each product once
    (tmp_path / "items.csv").write_text("item_id,title\n12,lamp\n13,desk\n")
    data = load_interactions(path, "sequences")
    assert data.has_text and data.dropped == 3
    assert data.sequences == [[0], [0, 1]]
    path.write_text("u1\n")
    with pytest.raises(DataError, match=r"Shop.txt: line 1: shopper 'u1' has no products"):
        load_interactions(path)
