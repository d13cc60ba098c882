"""Memorization analysis (M_e, T(N, tau), T_update, overfitting point) on hand-made run directories (no JAX)."""

import math
import os

import pandas as pd
import pytest
from hand_made_runs import MEM_UPDATE, RECORDS, SPE, write_run

from memdyn.studies.memorization import analysis as memorization


def test_epoch_memorization_token_weighted(tmp_path):
    frame = memorization.epoch_memorization(write_run(tmp_path / "a"))
    assert frame["epoch"].tolist() == [0, 1, 2, 3] and (frame["m_from"] == "in_step").all()
    assert frame["exact_match"].tolist() == pytest.approx([0.4, 0.75, 0.95, 1.0])
    assert frame["num_tokens"].tolist() == [100, 100, 100, 20]
    assert frame["complete"].tolist() == [True, True, True, False]
    assert (frame["size"] == "nano").all() and (frame["params"] == 1000).all() and (frame["run"] == "a").all()


def test_epoch_matches_train_csv_epoch(tmp_path):
    workdir = write_run(tmp_path / "a")
    train = pd.read_csv(os.path.join(workdir, "train.csv"))
    assert memorization.steps_per_epoch(train) == SPE
    assert (train["step"] // SPE == train["epoch"]).all()


def test_t_epochs(tmp_path):
    frame = memorization.epoch_memorization(write_run(tmp_path / "a"))
    t = memorization.t_epochs(frame, (0.3, 0.5, 0.75, 0.9, 0.99))
    assert t[0.3] == 0 and t[0.5] == 1 and t[0.75] == 1 and t[0.9] == 2
    assert math.isnan(t[0.99])  # only the incomplete sweep of epoch 3 reaches it
    # Without the completeness column every epoch counts.
    assert memorization.t_epochs(frame.drop(columns="complete"), [0.99])[0.99] == 3


def test_training_set_evaluations_are_preferred(tmp_path):
    workdir = write_run(tmp_path / "a", train_m=(0.05, 0.3, 0.6, 0.8))
    frame = memorization.epoch_memorization(workdir)
    assert (frame["m_from"] == "train_eval").all() and frame["epoch"].tolist() == [0, 1, 2, 3]
    assert frame["exact_match"].tolist() == [0.05, 0.3, 0.6, 0.8]
    assert memorization.t_epochs(frame, [0.5, 0.7]) == {0.5: 2.0, 0.7: 3.0}
    assert memorization.epoch_memorization(workdir, m_from="in_step")["m_from"].eq("in_step").all()
    with pytest.raises(ValueError, match="no evaluation of the training set"):
        memorization.epoch_memorization(write_run(tmp_path / "b"), m_from="train_eval")
    summary = memorization.analyze_runs([workdir])
    assert summary["final_epoch"].item() == 3 and summary["final_m"].item() == 0.8
    assert summary["m_before_overfit"].item() == 0.8  # validation perplexity rises at epoch 3
    # the generalization gap: training-set M minus validation M (0.1 in write_run) after the same epoch
    assert summary["gap_before_overfit"].item() == pytest.approx(0.8 - 0.1)
    assert summary["final_gap"].item() == pytest.approx(0.8 - 0.1)
    # validation M that differs per evaluation: the gap takes the one after the same epoch
    evals = pd.read_csv(os.path.join(workdir, "eval.csv"))
    validation = evals["set"] == "validation"
    evals.loc[validation, "exact_match"] = evals.loc[validation, "step"] / 100
    evals.to_csv(os.path.join(workdir, "eval.csv"), index=False)
    run = memorization.analyze_runs([workdir])
    assert run["gap_before_overfit"].item() == pytest.approx(0.8 - 3 * SPE / 100)  # epoch 3 = step 9
    evals[~validation | (evals["step"] != 9)].to_csv(os.path.join(workdir, "eval.csv"), index=False)
    assert math.isnan(memorization.analyze_runs([workdir])["final_gap"].item())  # not evaluated then


def test_seeds_are_aggregated_with_t_intervals(tmp_path):
    from scipy import stats as scipy_stats

    workdirs = [
        write_run(tmp_path / f"s{seed}", seed=seed, train_m=(0.0, 0.3, m, m + 0.1))
        for seed, m in enumerate((0.5, 0.6, 0.8))
    ]
    out = tmp_path / "out"
    summary = memorization.analyze_runs(workdirs, out_dir=str(out))
    table = pd.read_csv(out / "memorization_by_size.csv")
    assert len(table) == 1 and table["n_seeds"].item() == 3
    finals = summary["final_m"].to_numpy()
    half = scipy_stats.t.ppf(0.975, 2) * finals.std(ddof=1) / math.sqrt(3)
    assert table["final_m_mean"].item() == pytest.approx(finals.mean())
    assert table["final_m_ci_high"].item() == pytest.approx(finals.mean() + half)
    # tau = 0.7 reached by two seeds of three: no mean, and the table says so
    assert table["T_epochs_0.7_n"].item() == 2 and math.isnan(table["T_epochs_0.7_mean"].item())
    assert table["T_epochs_0.5_mean"].item() == pytest.approx(2.0) and table["T_epochs_0.5_n"].item() == 3
    assert "reached by 2/3" in (out / "memorization_by_size.md").read_text()


def test_t_updates_rolling_window():
    train = pd.DataFrame({"step": range(len(MEM_UPDATE)), "mem_update": MEM_UPDATE}).iloc[::-1]
    assert memorization.t_updates(train, [0.55], window=1) == {0.55: 3.0}
    t = memorization.t_updates(train, [0.55, 0.9], window=5)
    assert t[0.55] == 7.0  # the raw value crossed at U = 3, the rolling mean only at U = 7
    assert math.isnan(t[0.9])
    with pytest.raises(ValueError):
        memorization.t_updates(train, [0.5], window=0)


def test_overfitting_point():
    evals = pd.DataFrame(
        {"step": [9, 0, 6, 3, 3], "set": ["validation"] * 4 + ["special"], "perplexity": [25.0, 50.0, 20.0, 30.0, 99.0]}
    )
    assert memorization.overfitting_point(evals, SPE) == {"overfit_step": 9, "overfit_epoch": 3.0}
    rising_early = pd.DataFrame({"step": [0, 2, 4, 6], "set": "validation", "perplexity": [50.0, 40.0, 45.0, 60.0]})
    point = memorization.overfitting_point(rising_early, SPE)
    assert point["overfit_step"] == 4 and point["overfit_epoch"] == pytest.approx(4 / 3)
    monotone = evals.assign(perplexity=[10.0, 50.0, 20.0, 30.0, 5.0])
    point = memorization.overfitting_point(monotone, SPE)
    assert math.isnan(point["overfit_step"]) and math.isnan(point["overfit_epoch"])
    from_loss = pd.DataFrame({"step": [0, 1, 2], "set": "validation", "loss": [3.0, 2.0, 2.5]})
    assert memorization.overfitting_point(from_loss, 2.0)["overfit_epoch"] == 1.0


def test_analyze_runs_writes_outputs(tmp_path):
    nano = write_run(tmp_path / "nano")
    micro = write_run(
        tmp_path / "micro",
        size="micro",
        params=5000,
        with_run=False,
        validation=[(0, 50.0), (3, 40.0), (6, 30.0), (9, 20.0)],
        records=[(s, e, min(m + 0.25, 1.0), n) for s, e, m, n in RECORDS],
    )
    out = tmp_path / "out"
    summary = memorization.analyze_runs([nano, micro], out_dir=str(out))
    assert summary["run"].tolist() == ["nano", "micro"]  # micro's run name comes from its directory
    assert memorization.analyze_runs([micro, nano])["run"].tolist() == ["nano", "micro"]  # by size, not by name
    expected = {
        "m_from",
        "steps_per_epoch",
        "epochs_trained",
        "final_epoch",
        "final_m",
        "T_epochs_0.5",
        "T_epochs_0.7",
        "T_epochs_0.9",
        "T_updates_0.5",
        "T_updates_0.7",
        "T_updates_0.9",
        "overfit_epoch",
        "m_before_overfit",
        "size",
        "params",
        "seed",
        "causal",
        "peak_lr",
        "batch_size",
        "seq_len",
    }
    assert expected <= set(summary.columns)
    first, second = summary.iloc[0], summary.iloc[1]
    assert first["steps_per_epoch"] == SPE and first["epochs_trained"] == pytest.approx(10 / 3)
    assert first["final_m"] == pytest.approx(0.95)
    assert (first["T_epochs_0.5"], first["T_epochs_0.7"], first["T_epochs_0.9"]) == (1, 1, 2)
    assert second["T_epochs_0.5"] == 0 and second["T_epochs_0.9"] == 1  # M_e = 0.6, 0.925, 1.0
    assert (first["T_updates_0.5"], first["T_updates_0.7"]) == (6, 10) and math.isnan(first["T_updates_0.9"])
    assert first["overfit_epoch"] == 3.0 and first["m_before_overfit"] == pytest.approx(0.95)
    assert math.isnan(second["overfit_epoch"]) and math.isnan(second["m_before_overfit"])

    names = {
        "memorization_summary.csv",
        "memorization_epochs.csv",
        "memorization_summary.md",
        "memorization_by_size.csv",
        "memorization_by_size.md",
        "memorization.png",
        "t_tau.png",
    }
    assert names <= set(os.listdir(out)) and not [n for n in os.listdir(out) if n.startswith(".")]
    back = pd.read_csv(out / "memorization_summary.csv")
    assert back["run"].tolist() == ["nano", "micro"] and back["T_epochs_0.9"].tolist() == [2, 1]
    epochs = pd.read_csv(out / "memorization_epochs.csv")
    assert len(epochs) == 8 and set(epochs["size"]) == {"nano", "micro"}
    md = (out / "memorization_summary.md").read_text()
    assert md.startswith("| run |") and "micro" in md
    for png in ("memorization.png", "t_tau.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clear_errors(tmp_path):
    workdir = write_run(tmp_path / "a")
    os.remove(os.path.join(workdir, "train.csv"))
    with pytest.raises(FileNotFoundError, match="train.csv"):
        memorization.epoch_memorization(workdir)

    workdir = write_run(tmp_path / "b")
    for name in os.listdir(os.path.join(workdir, "examples")):
        os.remove(os.path.join(workdir, "examples", name))
    with pytest.raises(ValueError, match=str(tmp_path / "b")):
        memorization.analyze_runs([workdir])
    os.rmdir(os.path.join(workdir, "examples"))
    with pytest.raises(FileNotFoundError, match="examples"):
        memorization.analyze_runs([workdir])

    workdir = write_run(tmp_path / "c")
    os.remove(os.path.join(workdir, "eval.csv"))
    with pytest.raises(FileNotFoundError, match="eval.csv"):
        memorization.analyze_runs([workdir])


def test_markdown_prints_whole_numbers_as_integers():
    from memdyn.studies.tables import to_markdown

    table = to_markdown(pd.DataFrame({"params": [156.0], "T": [35.0], "M": [0.61234], "gap": [math.nan]}))
    assert table.splitlines()[-1] == "| 156 | 35 | 0.6123 |  |"
