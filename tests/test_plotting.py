"""The objective-vs-iteration figure: styles that keep many curves readable."""

from __future__ import annotations

from matplotlib.figure import Figure

from l2o_gym.plotting import plot_curves


def test_oracle_rows_share_their_baselines_colour_and_are_dotted(tmp_path, monkeypatch):
    drawn: list[Figure] = []
    save = Figure.savefig

    def capture(self, *args, **kwargs):
        drawn.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    curves = {"sgd": [1.0, 0.5], "adam": [1.0, 0.4], "lstm": [1.0, 0.1], "adam:oracle": [1.0, 0.2]}
    path = plot_curves(curves, tmp_path / "f.png", "t", highlight=["lstm"])
    assert path.read_bytes()[:4] == b"\x89PNG"
    lines = {ln.get_label(): ln for ln in drawn[0].axes[0].get_lines()}
    assert lines["adam:oracle"].get_color() == lines["adam"].get_color() != lines["sgd"].get_color()
    assert lines["adam:oracle"].get_linestyle() == ":" and lines["adam"].get_linestyle() == "--"
    assert lines["lstm"].get_linestyle() == "-" and lines["lstm"].get_linewidth() > lines["adam"].get_linewidth()
    assert drawn[0].axes[0].get_yscale() == "log"
