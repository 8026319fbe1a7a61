import json

import numpy as np
import pytest

from cmpo.eval import plots
from cmpo.eval.report import metric_rows, write_report
from cmpo.eval.steerability import effect_matrix, hypervolume_2d, pareto_front

PNG = b"\x89PNG\r\n\x1a\n"


def test_effect_matrix_hand_computed():
    # 2 conditions x 2 attributes x 3 prompts; reference scores all 1
    ref = np.ones((2, 3))
    scores = np.array([[[3, 3, 3], [1, 2, 0]],  # be a: a +2, b 0
                       [[1, 1, 1], [2, 2, 2]]])  # be b: a 0, b +1
    out = effect_matrix(scores, ref, n_boot=200)
    assert np.allclose(out["effect"], [[2, 0], [0, 1]])
    assert out["diagonal_mean"] == 1.5 and out["off_diagonal_mean"] == 0.0
    assert out["diagonal_beats_row"] == [True, True] and out["diagonal_beats_column"] == [True, True]
    assert out["ci95_low"][0][0] == out["ci95_high"][0][0] == 2.0  # constant differences: zero-width CI
    assert out["ci95_low"][0][1] < 0 < out["ci95_high"][0][1]
    same = effect_matrix(np.stack([scores[0], scores[0]]), ref, n_boot=50)  # every condition does the same
    assert same["diagonal_beats_row"] == [True, False] and same["diagonal_beats_column"] == [False, False]
    with pytest.raises(ValueError, match="square"):
        effect_matrix(np.zeros((1, 2, 3)), np.zeros((2, 3)))


def test_hypervolume_and_front():
    pts = [(3, 1), (2, 2), (1, 3), (1, 1)]
    # union of [0,3]x[0,1], [0,2]x[0,2], [0,1]x[0,3] = 3 + 2·1 + 1·1 = 6
    assert hypervolume_2d(pts) == pytest.approx(6.0)
    assert hypervolume_2d(pts, ref=(1, 1)) == pytest.approx(1.0)
    assert hypervolume_2d([(4, 4)]) == 16.0 and hypervolume_2d([]) == 0.0
    assert pareto_front(pts) == [0, 1, 2]
    assert pareto_front([(1, 1), (1, 1)]) == [0, 1]


def test_training_curves_from_trainer_state(tmp_path):
    run = tmp_path / "cmpo.checkpoints" / "checkpoint-4"
    run.mkdir(parents=True)
    hist = [{"step": s, "loss": 1.0 / s, "rewards/accuracies": 0.5 + s / 10} for s in range(1, 5)]
    hist.append({"step": 4, "eval_loss": 0.3, "eval_rewards/accuracies": 0.8})
    (run / "trainer_state.json").write_text(json.dumps({"log_history": hist}))
    loaded = plots.load_log_history(tmp_path / "cmpo")
    assert loaded == hist
    path, counts = plots.training_curves({"cmpo": loaded}, tmp_path / "t.png")
    assert path.read_bytes()[:8] == PNG and counts["cmpo"] == {"loss": 4, "eval_loss": 1, "rewards/accuracies": 4,
                                                                "eval_rewards/accuracies": 1}
    assert np.allclose(plots.ema([1.0, 0.0, 0.0], 0.5), [1.0, 0.5, 0.25])
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        plots.find_trainer_state(tmp_path / "nothing")


def _results():
    def acc(a):
        return {"accuracy": a, "correct": 3, "ties": 0, "n": 4, "ci95": [a - 0.2, min(1, a + 0.2)]}
    return {
        "settings": {"seed": 0, "num_prompts": 4, "max_new_tokens": 32},
        "models": {"cmpo": {"kind": "plural", "attributes": ["a", "b"], "paths": ["x"]}},
        "accuracy": {"cmpo": {"a": {"condition": "λ=(1, 0)", "policy": acc(0.75), "implicit_reward": acc(0.5)}}},
        "correlation": {"cmpo": {"a": {"spearman": 0.4, "spearman_p": 0.3, "kendall": 0.33, "kendall_p": 0.4,
                                       "n": 6}}},
        "winrate": {"cmpo": {"a": {"win_rate": 0.25, "wins": 2, "ties": 1, "losses": 1, "n": 4, "ci95": [-0.5, 1.0],
                                   "invalid": 0, "mean_words_model": 10.0, "mean_words_reference": 12.5,
                                   "examples": [{"prompt": "p <b>", "model": "m", "reference": "r", "outcome": 1}]}}},
        "steerability": {"cmpo": {**effect_matrix(np.array([[[3, 3], [1, 1]], [[1, 1], [2, 2]]]), np.ones((2, 2)),
                                                 n_boot=20),
                                  "attributes": ["a", "b"], "scorer": "rules",
                                  "guards": {"a": {"finished": 1.0, "reference_perplexity": 3.0},
                                             "b": {"finished": 0.5, "reference_perplexity": 4.0},
                                             "reference": {"finished": 1.0}}}},
        "pareto": {"cmpo": {"attributes": ["a", "b"], "points": [{"t": 1.0, "scores": [3, 1]}, {"t": 0.0, "scores": [1, 2]}],
                            "front": [0, 1], "hypervolume": 5.0, "hypervolume_ref_point": [0, 0],
                            "reference_scores": [1, 1], "n_prompts": 2}},
        "training": {"cmpo": [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}]},
        "judge": {"name": "scorer:rules"},
    }


def test_report_references_every_plot_and_metric(tmp_path):
    paths = write_report(_results(), tmp_path / "out")
    expected = {"winrate", "accuracy", "reward_accuracy", "correlation", "heatmap_cmpo", "pareto", "training"}
    assert expected <= set(paths)
    html_text = (tmp_path / "out" / "report.html").read_text()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for name in expected:
        data = paths[name].read_bytes()
        assert data[:8] == PNG and len(data) > 1000
        assert f'data-plot="{name}"' in html_text
        assert metrics["plots"][name] == f"plots/{paths[name].name}"
    assert html_text.count("data:image/png;base64,") == len(expected)
    rows = metric_rows(metrics)
    assert len(rows) > 40
    for key, _ in rows:
        assert f"<td>{key}</td>" in html_text, key
    assert "winrate.cmpo.a.win_rate" in dict(rows) and "&lt;b&gt;" in html_text  # escaped example text
    assert metrics["training"]["cmpo"]["points"] == 2 and metrics["settings"]["num_prompts"] == 4
