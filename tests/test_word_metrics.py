"""precision@k and nDCG@k of word queries (`mullama index eval --queries`), against a 3-query case worked out
by hand and against scikit-learn's nDCG."""

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from mullama.knn.evaluate import word_metrics

VALUES = {"a": "x", "b": "y", "c": "x", "d": "y", "e": "z", "f": "x"}  # f is labelled but not indexed
INDEXED = {"a", "b", "c", "d", "e"}
FOUND = [["a", "b", "c"], ["b", "d", "a"], ["a", "b", "e"]]
WANTED = ["x", "y", "z"]


def test_three_word_queries_score_as_worked_out_by_hand():
    metrics = word_metrics(FOUND, WANTED, VALUES, INDEXED, k=3)
    # x: hits at ranks 1 and 3 of the 2 indexed x clips (f is not indexed): DCG 1 + 1/2, ideal 1 + 1/log2(3)
    # y: both y clips first: 1.  z: its only clip third: (1/2) / 1
    ndcg = [(1 + 0.5) / (1 + 1 / math.log2(3)), 1.0, 0.5]
    assert metrics["queries"] == 3
    assert metrics["precision"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    assert metrics["ndcg"] == pytest.approx(sum(ndcg) / 3)
    assert metrics["ndcg"] == pytest.approx(0.806573, abs=1e-6)


def test_ndcg_agrees_with_scikit_learn():
    clips = sorted(INDEXED)
    expected = []
    for found, value in zip(FOUND, WANTED):
        relevance = np.array([[1.0 if VALUES[c] == value else 0.0 for c in clips]])
        scores = np.array([[len(found) - found.index(c) if c in found else 0.0 for c in clips]])
        expected.append(ndcg_score(relevance, scores, k=3))
    assert word_metrics(FOUND, WANTED, VALUES, INDEXED, k=3)["ndcg"] == pytest.approx(np.mean(expected))


def test_fewer_clips_than_k_count_as_misses():
    metrics = word_metrics([["a"]], ["x"], VALUES, INDEXED, k=4)
    assert metrics["precision"] == pytest.approx(1 / 4)
    assert metrics["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_query_files_from_a_spreadsheet_read_and_repeated_rows_count_once(tmp_path):
    from mullama.knn.evaluate import read_labels, read_word_queries

    queries = tmp_path / "queries.csv"
    queries.write_bytes("\ufeffquery,label_name,value\r\ncalm keys,instrument,piano\r\n\r\n calm keys ,instrument,piano\r\n"
                        "brass,instrument,trumpet\r\n".encode())
    assert read_word_queries(queries) == [("calm keys", "instrument", "piano"), ("brass", "instrument", "trumpet")]
    labels = tmp_path / "labels.csv"
    labels.write_text("clip_id,label_name,value\na,instrument,piano\na,instrument,piano\n")
    assert read_labels(labels) == {"instrument": {"a": "piano"}}
