"""The paper's Table 1 fed in must reproduce its Table 2 and Total rows exactly."""

import numpy as np
import pytest

from ferpipe import paper
from ferpipe.aggregate import table1, table2
from ferpipe.config import CLASSES
from ferpipe.metrics import mean_std, overall_accuracy, pm, run_matrix, sensitivity, summarize

# Li & Lima (2021) Table 1 (input) and the Table 2 / Total values it must reproduce.
TABLE1 = paper.SENSITIVITY_PER_RUN
TABLE2_OA = [93.29, 98.43, 95.71, 95.43, 94.43, 96.00, 95.00, 94.86, 94.29, 96.43]
TOTALS = ["95.50 ± 2.32", "94.50 ± 2.22", "95.70 ± 2.06", "95.90 ± 2.69",
          "96.40 ± 1.84", "94.10 ± 4.15", "95.60 ± 2.12"]  # fmt: skip


def matrix_from_sensitivities(sens, rng):
    """A 7x7 matrix with 100 images per true class and the given diagonal; errors spread at random."""
    h = np.zeros((7, 7), dtype=int)
    for t, correct in enumerate(sens):
        h[t, t] = correct
        wrong = rng.choice([c for c in range(7) if c != t], size=100 - correct)
        np.add.at(h[t], wrong, 1)
    return h


@pytest.fixture
def paper_summary():
    rng = np.random.default_rng(0)
    runs = {}
    for r, sens in enumerate(TABLE1, start=1):
        h = matrix_from_sensitivities(sens, rng)
        # split each run into 10 fold matrices to exercise the eq. 7 sum as well
        folds = [h // 10] * 9 + [h - 9 * (h // 10)]
        runs[r] = run_matrix(folds)
        assert (runs[r] == h).all()
    return summarize(runs)


def test_table2_per_run_oa(paper_summary):
    assert [round(v, 2) for v in paper_summary["oa_per_run"]] == TABLE2_OA
    assert table2(paper_summary)["OA"].tolist()[:-1] == [f"{v:.2f}" for v in TABLE2_OA]


def test_table2_total(paper_summary):
    assert pm(paper_summary["oa_mean"], paper_summary["oa_std"]) == "95.39 ± 1.41"
    assert table2(paper_summary)["OA"].iloc[-1] == "95.39 ± 1.41"


def test_table1_total_row(paper_summary):
    total = table1(paper_summary).iloc[-1]
    assert total["run"] == "Total"
    assert [total[c] for c in CLASSES] == TOTALS


def test_basic_definitions():
    h = np.array([[3, 1], [0, 4]])
    assert sensitivity(h).tolist() == [0.75, 1.0]
    assert overall_accuracy(h) == 7 / 8
    m, s = mean_std([1, 2, 3])
    assert m == 2 and s == 1.0  # sample std (n-1)
