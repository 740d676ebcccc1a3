"""The figures of analyze_rank.py and compare.py say what they show: legends for colors and lines, whole-number layer
ticks, titles inside the figure, and notes only where they apply."""

import matplotlib
import numpy as np
import pytest

import analyze_rank
import compare

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the scripts save (analyze_rank.py's through save_figure, compare.py's closed after saving), drawn,
    in order."""
    kept, close, save = [], plt.close, analyze_rank.save_figure

    def keep(fig):
        FigureCanvasAgg(fig).draw()  # a renderer for the extents (analyze_rank's Figures have none of pyplot's)
        kept.append(fig)

    def saved(fig, *args):
        path = save(fig, *args)
        keep(fig)
        return path

    monkeypatch.setattr(plt, "close", lambda fig: (keep(fig), close(fig)))
    monkeypatch.setattr(analyze_rank, "save_figure", saved)
    return kept


def assert_titles_inside(fig):
    width, height = fig.canvas.get_width_height()
    for ax in fig.axes:
        box = ax.title.get_window_extent()
        assert 0 <= box.x0 and box.x1 <= width and box.y1 <= height, (ax.get_title(), box, width)


def report(max_ranks, lazy_tolerance=0.0, name="out-a-rather-long-run-name-of-a-reference/ckpt.pt"):
    lazy = [r <= 1 + lazy_tolerance for r in max_ranks]
    layers = [dict(layer=i, max_rank=r, lazy=lazy[i], avg_mass=3.0 - i / 2, sink_share=0.2 * i,
                   heads=[dict(head=h, rank=r - h / 10) for h in range(2)]) for i, r in enumerate(max_ranks)]
    return dict(model=name, n_head=2, layers=layers,
                settings=dict(tau=0.9, eta=0.9, seq_len=100, lazy_tolerance=lazy_tolerance))


@pytest.mark.parametrize("tolerance,line", [(0.0, "lazy at or below: MaxRank = 1 (the paper)"),
                                           (0.5, "lazy at or below: MaxRank <= 1 + 0.5")])
def test_analyze_rank_figures(tmp_path, figures, tolerance, line):
    analyze_rank.plot(report([6.0, 4.0, 1.0, 1.25], tolerance), str(tmp_path))
    max_rank, heatmap, mass_sink = figures
    ax = max_rank.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [line, "not lazy", "lazy"]
    red = [bar.get_x() + bar.get_width() / 2 for bar in ax.patches if bar.get_facecolor() == to_rgba("tab:red")]
    assert red == ([2, 3] if tolerance else [2])  # layer 3's MaxRank 1.25 is lazy only with the tolerance
    assert ax.get_title() == ("out-a-rather-long-run-name-of-a-reference\n"
                                                             "max approximate rank of attention per layer")
    assert [tuple(h.get_ydata()) for h in ax.get_lines()] == [(1 + tolerance, 1 + tolerance)]
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 1  # a bar at MaxRank 1 shows beside ones of 100
    assert "red" not in ax.get_title()
    ticks = [t for t in mass_sink.axes[0].get_xticks() if -0.5 <= t <= 3.5]
    assert ticks == [0, 1, 2, 3]  # layers, not 0.5 steps
    for fig in figures:
        assert_titles_inside(fig)


def test_analyze_rank_without_a_lazy_layer_has_no_lazy_entry(tmp_path, figures):
    analyze_rank.plot(report([6.0, 4.0]), str(tmp_path))
    texts = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert texts == ["lazy at or below: MaxRank = 1 (the paper)", "not lazy"]


def collapse_records(n_layers, eps):
    """{iter: {layer: metrics}} of a run whose depth at iteration 10 * i is n_layers[i], every eps `eps`."""
    return {10 * i: {layer: dict(max_rank=2.0 + layer, sink_share=0.3, eps=eps, grad_q=eps / 100, bound_q=eps * 10,
                                 grad_k=eps / 200, bound_k=eps * 5) for layer in range(n)}
            for i, n in enumerate(n_layers)}


@pytest.mark.parametrize("n_layers,blank", [([2, 2, 2], False), ([1, 2, 2], True)])
def test_collapse_heatmaps_say_blank_only_where_a_layer_is_missing(tmp_path, figures, n_layers, blank):
    compare.plot_collapse("a-run-trained-without-growth-or-with-it", collapse_records(n_layers, 0.99),
                          str(tmp_path / "c.png"))
    titles = [ax.get_title() for ax in figures[0].axes if ax.get_label() != "<colorbar>"]
    assert [t.endswith(" (blank: layer not there yet)") for t in titles[:2]] == [blank, blank]
    assert_titles_inside(figures[0])


@pytest.mark.parametrize("eps,left,note", [(0.993, 0.01, "every eps >= 0.99: no head is sink-collapsed"),
                                           (1e-4, 5e-5, None)])
def test_eps_panels_span_decades_and_say_when_nothing_collapsed(tmp_path, figures, eps, left, note):
    compare.plot_collapse("run", collapse_records([2, 2], eps), str(tmp_path / "c.png"))
    panels = [ax for ax in figures[0].axes if ax.get_xscale() == "log"]
    assert len(panels) == 2
    for ax in panels:
        assert ax.get_xlim() == pytest.approx((left, 1.5))
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and left <= t.get_position()[0] <= 1.5]
        assert all(label.startswith("$\\mathdefault{10^{") for label in labels), labels  # decades only
        assert [t.get_text() for t in ax.texts] == ([note] if note else [])
    assert np.isfinite([p.get_offsets() for ax in panels for p in ax.collections]).all()
