"""hle/export/explore.py: the self-contained explorer page, its stored data, and the page in Chromium."""
from __future__ import annotations

import dataclasses

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hle.core.kernels import cosine_distance, instance_kernel, pixel_coordinates, semantic_logits
from hle.engine.build import build_mapper, decoder_params, decoder_split_embedding, load_records
from hle.engine.inference import decode_outputs, load_trained, run_model
from hle.export.explore import _stride_ids, image_payload, page_html, quantize, run_lengths, write_explorer

# ---------------------------------------------------------------- stored data


def test_quantize_error_is_at_most_half_a_step() -> None:
    gen = np.random.default_rng(0)
    values = np.concatenate([gen.normal(size=(500, 3)), np.full((500, 1), 0.25)], axis=1)
    for bits, dtype in ((8, np.uint8), (16, np.uint16)):
        q, lo, step = quantize(values, bits=bits)
        assert q.dtype == dtype and q.shape == values.shape
        restored = lo + q.astype(np.float64) * step
        assert np.all(np.abs(restored - values) <= step / 2 + 1e-12)
        np.testing.assert_allclose(step[:3], (values.max(0) - values.min(0))[:3] / (2**bits - 1))
        assert step[3] == 0 and np.all(restored[:, 3] == 0.25)  # a constant column is exact
        assert q[:, :3].min() == 0 and q[:, :3].max() == 2**bits - 1  # the whole range is used


def test_run_lengths_round_trip() -> None:
    ids = np.array([[3, 3, 0, 0], [0, 7, 7, 7], [7, 7, 1, 1]])
    values, lengths = run_lengths(ids)
    assert values.tolist() == [3, 0, 7, 1] and lengths.tolist() == [2, 3, 5, 2]
    assert np.array_equal(np.repeat(values, lengths).reshape(ids.shape), ids)
    assert run_lengths(np.zeros((0, 3)))[0].size == 0


def test_stride_ids_need_constant_blocks() -> None:
    blocks = np.repeat(np.repeat(np.arange(6).reshape(2, 3), 2, 0), 2, 1)[:3, :5]
    assert _stride_ids(blocks, 2, (3, 5)).tolist() == [[0, 1, 2], [3, 4, 5]]
    broken = blocks.copy()
    broken[0, 1] = 9
    with pytest.raises(ValueError, match="not constant on 2x2 blocks"):
        _stride_ids(broken, 2, (3, 5))


def page_data(html: str) -> dict[str, Any]:
    """The JSON data block of a written page (the page's own JSON, not the Python objects)."""
    match = re.search(r'<script type="application/json" id="hle-data">(.*?)</script>', html, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_page_is_one_self_contained_file() -> None:
    info = {"classes": [{"name": "</script><script>alert(1)</script>", "isthing": True, "color": [1, 2, 3]}],
            "classMeans": [[1.0, 0.0]], "classSigma": [0.5], "split": False, "coordScale": 1 / 64}
    html = page_html([], info)
    assert "</script><script>alert" not in html  # a name cannot end the data block
    assert page_data(html)["classes"][0]["name"] == info["classes"][0]["name"]
    # No server, no network, no ES modules: nothing loaded from elsewhere.
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|type=\"module\"|\bimport\s*\(|\bfetch\s*\(|https?://", html)
    assert html.count("<script") == 2 and "{{" not in html


def _val(synth: Path) -> tuple[list[dict], Any]:
    return load_records("synthetic", str(synth), "val")


def _stored(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Dequantised ``embedding [N, D]`` and ``[sigma, spatial sigma] [N, 2]`` read from the page data."""
    n = payload["mapHeight"] * payload["mapWidth"]
    emb, sig = payload["embedding"], payload["sigma"]
    q = np.frombuffer(base64.b64decode(emb["q"]), dtype="<u1").reshape(n, emb["dim"])
    qs = np.frombuffer(base64.b64decode(sig["q"]), dtype="<u2").reshape(n, 2)
    return np.asarray(emb["lo"]) + q * np.asarray(emb["step"]), np.asarray(sig["lo"]) + qs * np.asarray(sig["step"])


def _network(loaded: Any, path: str) -> tuple[Any, Any]:
    """Stride outputs and decoded result of one image, computed here (not by the page code)."""
    from hle.engine.writers import prepare_image

    _, image = prepare_image(path, loaded.config.data.max_side)
    out = run_model(loaded.model, image[None], flip=loaded.config.eval.flip, upsample=False)
    result = decode_outputs(
        loaded.model, out, loaded.metadata.is_thing, decoder_params(loaded.config),
        split_embedding=decoder_split_embedding(loaded.config), image_size=image.shape[-2:],
    )[0]
    return out, result


def test_payload_holds_the_network_maps_within_quantisation(checkpoint: Path, synth: Path) -> None:
    loaded = load_trained(checkpoint)
    path = _val(synth)[0][1]["file_name"]
    payload = json.loads(json.dumps(image_payload(loaded, path)))
    out, result = _network(loaded, path)
    d, h, w = out.embedding.shape[1:]
    assert (payload["mapHeight"], payload["mapWidth"], payload["stride"], payload["embedding"]["dim"]) == (h, w, 2, d)
    emb, sig = _stored(payload)
    exact = out.embedding[0].reshape(d, -1).T.double().numpy()
    assert np.all(np.abs(emb - exact) <= np.asarray(payload["embedding"]["step"]) / 2 + 1e-6)
    sigmas = torch.cat([out.sigma[0], out.spatial_sigma[0]]).reshape(2, -1).T.double().numpy()
    assert np.all(np.abs(sig - sigmas) <= np.asarray(payload["sigma"]["step"]) / 2 + 1e-6)
    ids = np.repeat(*(np.frombuffer(base64.b64decode(payload["ids"][k]), "<i4") for k in ("values", "lengths")))
    full = np.repeat(np.repeat(ids.reshape(h, w), 2, 0), 2, 1)[: payload["height"], : payload["width"]]
    assert np.array_equal(full, result.panoptic.numpy())
    names = loaded.metadata.class_names
    assert [(s["id"], s["name"], s["isthing"]) for s in payload["segments"]] == [
        (s["id"], names[s["category_id"]], s["isthing"]) for s in result.segments_info
    ]
    assert [s["score"] for s in payload["segments"]] == pytest.approx([s["score"] for s in result.segments_info], abs=1e-6)


# ---------------------------------------------------------------------- browser

from explore_browser import click_map_pixel, missing_browser_reason, open_page, read_canvas, screen_point  # noqa: E402

needs_browser = pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason()))


@pytest.fixture(scope="module", params=[False, True], ids=["joint", "split"])
def explorer(checkpoint: Path, synth: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The page of two val images; ``split``: the split-embedding ablation (psi and Phi on halves)."""
    loaded = load_trained(checkpoint)
    if request.param:
        loaded.config.loss.options = dataclasses.replace(loaded.config.loss.options, split_embedding=True)
    # Untrained, the embeddings differ little; class sigmas at their floor (0.05) make
    # psi vary over the image, so the drawn psi is checked on more than a flat map.
    with torch.no_grad():
        loaded.model.class_sigma_raw.fill_(-12.0)
    paths = [r["file_name"] for r in _val(synth)[0][:2]]
    html = write_explorer(loaded, paths, tmp_path_factory.mktemp("explore") / "explore.html")
    data = page_data(html.read_text())
    assert data["split"] is request.param
    return {"loaded": loaded, "paths": paths, "html": html, "data": data}


def _lut_index(rgb: np.ndarray) -> np.ndarray:
    """Colour -> index into the 256-entry colour table (every entry is a distinct colour)."""
    import matplotlib

    table = (matplotlib.colormaps["magma"](np.arange(256))[:, :3] * 255).round().astype(np.int64)
    key = {tuple(c): i for i, c in enumerate(table.tolist())}
    assert len(key) == 256
    return np.array([key[tuple(c)] for c in rgb.reshape(-1, 3).tolist()])


def _drawn_values(page: Any, image: int, panel: str) -> np.ndarray:
    """Centre of the colour bin of every drawn pixel, in [0, 1] (bins are 1/256 wide)."""
    return (_lut_index(read_canvas(page, image, panel)) + 0.5) / 256


def _references(loaded: Any, payload: dict[str, Any], index: int, split: bool) -> dict[str, Any]:
    """Fig. 1 distance, psi and Phi of pixel ``index`` from the stored maps, by hle.core.kernels (float64)."""
    emb, sig = _stored(payload)
    e = torch.from_numpy(emb)
    d = e.shape[1]
    full = F.normalize(e, dim=1)
    sem, ins = (F.normalize(e[:, : d // 2], dim=1), F.normalize(e[:, d // 2 :], dim=1)) if split else (full, full)
    means, sigma_c = loaded.model.class_means.detach().double(), loaded.model.class_sigma().detach().double()
    logits = semantic_logits(sem, means[:, : sem.shape[1]], sigma_c)
    k = int(logits[:, index].argmax())
    coords = pixel_coordinates(payload["mapHeight"], payload["mapWidth"], stride=payload["stride"], dtype=torch.float64)
    s, ss = torch.from_numpy(sig[:, 0]), torch.from_numpy(sig[:, 1])
    phi = instance_kernel(ins, coords, ins[index : index + 1], s[index : index + 1], coords[index : index + 1], ss[index : index + 1])
    return {"distance": cosine_distance(full, full[index : index + 1])[0].numpy(), "class": k,
            "psi": logits.softmax(0)[k].numpy(), "phi": phi[0].numpy()}


@needs_browser
@pytest.mark.slow
def test_click_draws_distance_and_kernels_of_the_clicked_pixel(explorer: dict[str, Any], tmp_path: Path) -> None:
    loaded, data = explorer["loaded"], explorer["data"]
    bin_half = 0.5 / 256
    with open_page(explorer["html"]) as page:
        # Image 0 clicked on the input, image 1 on the Phi heatmap: every panel maps clicks alike.
        for image, (row, col), panel in ((0, (11, 40), "input"), (1, (25, 7), "phi")):
            payload = data["images"][image]
            size, stride = (payload["height"], payload["width"]), payload["stride"]
            click_map_pixel(page, image, row, col, stride, size, panel=panel)
            section = page.locator(f"section[data-index='{image}']")
            assert section.get_attribute("data-selected") == f"{row},{col}"
            index = row * payload["mapWidth"] + col
            ref = _references(loaded, payload, index, data["split"])
            assert int(section.get_attribute("data-class")) == ref["class"]
            # Distance (bright = near), scaled by the page's maximum distance.
            scale = float(page.locator(f"section[data-index='{image}'] canvas[data-panel='distance']").get_attribute("data-scale"))
            assert scale == pytest.approx(ref["distance"].max(), abs=1e-5)
            drawn = (1 - _drawn_values(page, image, "distance")) * scale
            assert np.all(np.abs(drawn - ref["distance"]) <= bin_half * scale + 1e-5)
            for kernel in ("psi", "phi"):
                assert np.all(np.abs(_drawn_values(page, image, kernel) - ref[kernel]) <= bin_half + 1e-5), kernel
            assert ref["phi"][index] == pytest.approx(1.0) and ref["distance"][index] == pytest.approx(0.0, abs=1e-6)
            assert np.ptp(ref["psi"]) > 0.1 and np.ptp(ref["phi"]) > 0.5, (np.ptp(ref["psi"]), np.ptp(ref["phi"]))  # not flat
            # Against the network's float outputs: within the quantisation error of the
            # embedding (|cos error| <= 2 |step|, see the module docstring) plus half a bin.
            out, _ = _network(loaded, explorer["paths"][image])
            exact = out.embedding[0].flatten(1).T.double()
            true = cosine_distance(exact, exact[index : index + 1])[0].numpy()
            bound = 2 * float(np.linalg.norm(payload["embedding"]["step"]))
            assert np.all(np.abs(drawn - true) <= bin_half * scale + bound + 1e-5)
        page.screenshot(path=str(tmp_path / "explore.png"))
    from PIL import Image

    assert Image.open(tmp_path / "explore.png").size == (1400, 900)


@needs_browser
def test_hover_names_class_segment_and_score(explorer: dict[str, Any]) -> None:
    loaded, data = explorer["loaded"], explorer["data"]
    payload = data["images"][0]
    size = (payload["height"], payload["width"])
    _, result = _network(loaded, explorer["paths"][0])
    names = loaded.metadata.class_names
    by_id = {s["id"]: s for s in result.segments_info}
    pan = result.panoptic.numpy()
    with open_page(explorer["html"]) as page:
        seen = set()
        # One pixel inside each of several segments (the median pixel of its mask), and a corner.
        points = [(5, 5)]
        for seg in result.segments_info[:4]:
            ys, xs = np.nonzero(pan == seg["id"])
            points.append((int(ys[len(ys) // 2]), int(xs[len(xs) // 2])))
        for y, x in points:
            page.mouse.move(*screen_point(page, 0, "panoptic", y + 0.5, x + 0.5, size))
            text = page.locator("section[data-index='0'] .info .hover").inner_text()
            seg = by_id.get(int(pan[y, x]))
            assert text.startswith(f"({x}, {y}) ")
            if seg is None:
                assert "void (id 0)" in text
            else:
                kind = "thing" if seg["isthing"] else "stuff"
                assert f"{names[seg['category_id']]} ({kind}) · segment id {seg['id']} · score {seg['score']:.3f}" in text
                seen.add(seg["id"])
        assert len(seen) >= min(3, len(result.segments_info))


def test_browser_test_skips_with_a_reason_without_chromium(monkeypatch: pytest.MonkeyPatch) -> None:
    import explore_browser as browser

    monkeypatch.setenv("HLE_CHROMIUM", "")
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    reason = browser.missing_browser_reason()
    assert reason is not None and "chromium" in reason
