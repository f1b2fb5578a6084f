"""The cost of the matrix and conv forms (dnnlab.conv.scaling): rows, skipping, analysis."""
import torch

from dnnlab.conv.chain import ChainSpec
from dnnlab.conv.scaling import (
    analyse,
    crossover_sentence,
    log2_label,
    measure_forms,
    measure_row,
    memory_bytes,
)


def test_measure_row_skips_big_matrices():
    rows = [measure_row(n, repeats=1, max_matrix_bytes=64 * 62 * 4 * 3) for n in (64, 256)]
    assert not rows[0]["matrix_skipped"] and rows[0]["matrix_s"] > 0
    assert rows[0]["matrix_a_bytes"] == (62 * 64 + 60 * 62 + 58 * 60) * 4  # float32 A_w's
    assert rows[1]["matrix_skipped"] and rows[1]["matrix_s"] is None and rows[1]["conv_s"] > 0
    assert rows[1]["matrix_bytes"] is None and rows[1]["conv_bytes"] > 0


def test_memory_is_what_each_form_holds():
    spec = ChainSpec(n0=32, filters=[3, 3])
    r = measure_forms(spec, batch=2, dtype=torch.float64, repeats=1)
    y0, u = torch.zeros(2, 32, dtype=torch.float64), None
    from dnnlab.conv.chain import init_params

    params = init_params(spec, dtype=torch.float64)
    acts = (2 * 32 + 2 * 30 * 2 + 2 * 28 * 2) * 8  # y_0, (y_1, z_1), (y_2, z_2)
    assert memory_bytes("conv", spec, params, y0, u, "cpu") == acts
    assert memory_bytes("matrix", spec, params, y0, u, "cpu") == acts + spec.matrix_bytes(8)
    assert r["matrix"]["memory_bytes"] == acts + spec.matrix_bytes(8)
    assert r["conv"]["time_s"] > 0 and r["matrix"]["time_s"] > 0


def _row(n, m, c, skipped=False):
    return {"n": n, "matrix_s": None if skipped else m, "conv_s": c, "matrix_skipped": skipped}


def _paired(n, low, mid, high):
    return {"n": n, "matrix_s": mid, "conv_s": 1.0, "matrix_skipped": False, "ratio": mid,
            "ratio_low": low, "ratio_high": high}


def test_a_spread_that_covers_one_is_not_resolved():
    rows = [_paired(8, 0.5, 0.6, 0.7), _paired(16, 0.9, 1.05, 1.2), _paired(32, 1.5, 2.0, 2.2)]
    a = analyse(rows)
    assert a["crossover_n"] is None and not a["resolved"]
    assert a["verdicts"] == {"8": "matrix", "16": "unresolved", "32": "conv"}
    text = crossover_sentence(rows, a, 2e9)
    assert text.startswith("Crossover not resolved: the spread of the matrix/conv time covers 1 "
                           "at n = 2^4 (") and "1.05x [0.9, 1.2] at 2^4" in text
    rows[1] = _paired(16, 1.01, 1.05, 1.2)  # the spread above 1: resolved
    a = analyse(rows)
    assert a["crossover_n"] == 16 and a["resolved"]
    assert crossover_sentence(rows, a, 2e9).startswith(
        "The crossover: the conv form is faster from n = 16")
    everywhere = [_paired(8, 0.95, 1.3, 1.6), _paired(16, 1.2, 1.3, 1.4)]
    assert crossover_sentence(everywhere, analyse(everywhere), 2e9).startswith(
        "Crossover not resolved")  # "no crossover" only where every spread is above 1


def test_measure_row_times_the_pair_with_its_spread():
    row = measure_row(32, repeats=1)
    assert row["ratio_low"] <= row["ratio"] <= row["ratio_high"] and row["matrix_s"] > 0


def test_analysis_crossover_and_slopes():
    rows = [_row(8, 1.0, 2.0), _row(16, 3.0, 2.0), _row(32, 12.0, 4.0), _row(64, 0, 8.0, True)]
    a = analyse(rows)
    assert a["crossover_n"] == 16 and not a["conv_faster_everywhere"]
    assert a["matrix_skipped"] == [64] and a["ratio"]["32"] == 3.0
    assert abs(a["slopes"]["matrix"] - 2.0) < 1e-12 and abs(a["slopes"]["conv"] - 1.0) < 1e-12
    text = crossover_sentence(rows, a, 2e9)
    assert text.startswith("The crossover: the conv form is faster from n = 16")
    assert "skipped at n = 64" in text and "matrix n^2.00" in text
    everywhere = [_row(8, 3.0, 1.0), _row(16, 6.0, 1.0)]
    assert crossover_sentence(everywhere, analyse(everywhere), 2e9).startswith(
        "No crossover in n = 2^3 .. 2^4")
    never = [_row(8, 1.0, 3.0), _row(16, 1.0, 6.0)]
    assert analyse(never)["crossover_n"] is None
    assert crossover_sentence(never, analyse(never), 2e9).startswith(
        "The matrix form was faster at every n measured")
    assert crossover_sentence([_row(8, 0, 1.0, True)], analyse([_row(8, 0, 1.0, True)]),
                              1.0) == "The matrix form was skipped at every n."
    assert log2_label(4096) == "2^12"
