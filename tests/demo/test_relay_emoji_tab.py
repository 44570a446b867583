"""The demo's first tab (``ultrares.demo.tabs.relay_emoji``): class -> 64 px -> trained relay to 256 px
-> FSTD relay to 1024 px with the embedded emoji models, called in-process on the real ComfyUI. The
step counts are lowered here (the tab's own 30 + 40 + 40 take minutes on a CPU); sizes, factors,
tiles and the relay settings stay the tab's."""

from __future__ import annotations

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = ("ultrares-emoji64.safetensors", "ultrares-emoji-relay256.safetensors")

pytestmark = pytest.mark.skipif(
    not all(os.path.exists(os.path.join(ROOT, "models", "hdit", m)) for m in MODELS),
    reason="emoji models not built yet (make embedded-models)",
)


@pytest.fixture(scope="module")
def tab(comfy):
    from ultrares.demo.tabs import relay_emoji

    return relay_emoji


@pytest.fixture
def quick(tab, monkeypatch):
    """The tab with 6 stage-one steps and 8 relay grid steps (3 levels below the truncation sigma)."""
    inputs = tab.relay_inputs
    monkeypatch.setattr(tab, "BASE_STEPS", 6)
    monkeypatch.setattr(tab, "relay_inputs", lambda relay, seed: {**inputs(relay, seed), "steps": 8})
    return tab


def test_the_demo_opens_on_this_tab(tab):
    from ultrares.demo import tabs

    assert tabs.TABS[0] == "relay_emoji" and tabs.modules()[0] is tab
    assert tab.ID == "relay_emoji" and callable(tab.build)


def test_relay_runs_the_trained_blur_settings(tab):
    from ultrares.demo import session as S

    base, relay = S.load_all(tab.sources())
    assert S.load_all(tab.sources())[1] is relay  # cached together
    assert base.labels[: len(base.class_names)] == S.model_config(base)["dataset"]["class_names"]
    inputs = tab.relay_inputs(relay, 7)
    assert inputs["relay_settings"] == "model" and inputs["factor"] == 4 and inputs["seed"] == 7
    assert (inputs["blur_sigma_max"], inputs["prob_length"], inputs["s_block"], inputs["s_noise"]) == (
        3.0,
        0.93,
        0.15,
        0.2,
    )
    assert (inputs["steps"], inputs["truncation_sigma"], inputs["rho"], inputs["cfg"]) == (40, 0.9, 7.0, 1.0)
    assert tab.last_steps(relay, inputs) == range(13, 16)  # 16 levels below sigma 0.9 on the 40-level grid


def test_bad_inputs_are_messages(tab):
    from ultrares.demo import session as S

    with pytest.raises(S.UserError, match=r"Final size \(px\) 512"):  # the control's own label
        tab.relay_emoji("Flags", 0, 512)
    with pytest.raises(S.UserError, match="Seed=-1 is outside"):
        tab.relay_emoji("Flags", -1, 256)
    with pytest.raises(S.UserError, match="not one of this model's classes"):
        tab.relay_emoji("no such class", 0, 256)


def test_256_stops_after_the_relay(quick):
    seen = []
    low, mid, final, grid, info = quick.relay_emoji(
        "Food & Drink", 3, 256, report=lambda s, v, t: seen.append(s)
    )
    assert low.size == mid.size == (256, 256) and final is None and grid is None
    a = np.asarray(low)
    assert (a[::4, ::4] == a[3::4, 3::4]).all()  # the 64 px stage enlarged with nearest
    assert "B_max 3" in info and "Seam score" not in info
    assert [s for i, s in enumerate(seen) if s not in seen[:i]] == [
        "1/2: Food & Drink at 64 px",
        "2/2: relay 64 -> 256 px",
    ]


def test_1024_shows_the_stages_the_tile_edges_and_the_seam_score(quick):
    seen = []
    low, mid, final, grid, info = quick.relay_emoji(
        "Smileys & Emotion", 1, 1024, report=lambda s, v, t: seen.append((s, v, t))
    )
    assert low.size == mid.size == final.size == grid.size == (1024, 1024)
    stages = [s for i, (s, _, _) in enumerate(seen) if s not in [x for x, _, _ in seen[:i]]]
    assert [s.split(":")[0] for s in stages] == ["1/3", "2/3", "3/3"]
    assert any(
        s.startswith("3/3") and v == t == 3 for s, v, t in seen
    )  # the tiled relay's 3 levels reached the UI
    f, g = np.asarray(final, dtype=np.int16), np.asarray(grid, dtype=np.int16)
    changed = (f != g).any(axis=-1)
    cols, rows = changed.all(axis=0), changed.all(axis=1)  # the edges are whole lines across the image
    assert cols.any() or rows.any()
    assert (changed == (cols[None, :] | rows[:, None])).all()  # and nothing else is drawn
    assert "Seam score" in info and "last 3 steps" in info
    m = float(info.split("Seam score ")[1].split("**")[0])
    assert 0.2 < m < 5
    img = np.asarray(final, dtype=np.float64)
    assert img[:8, :8].mean() > 200 and img[-8:, -8:].mean() > 200  # the models draw on a white background
