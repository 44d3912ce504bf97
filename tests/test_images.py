"""Image patches (against a direct numpy computation), ZCA whitening, the Gabor fitter and the image eval section."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sparsecode.errors import ConfigError, DataError
from sparsecode.eval.gabor import GABOR_R2, excess_kurtosis, fit_gabor, gabor
from sparsecode.sources import ImageSource, ImageSourceConfig, open_source, source_config_from_dict


def _write_images(folder, sizes=((40, 56), (33, 30)), seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for i, (h, w) in enumerate(sizes):
        a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i}.png")
        arrays.append(a)
    return arrays


def _gray_standardised(a: np.ndarray) -> np.ndarray:
    """What the source should make of an RGB file: PIL's "L" conversion, then mean 0 / std 1."""
    g = np.asarray(Image.fromarray(a).convert("L"), dtype=np.float64)
    return (g - g.mean()) / g.std()


def test_patches_equal_direct_numpy_slices(tmp_path):
    arrays = _write_images(tmp_path)
    src = ImageSource(ImageSourceConfig(images=str(tmp_path), patch=5, n_patches=400, whiten="none", chunk_rows=64))
    rows = torch.cat([b.acts for s in ("train", "eval") for b in src.iter_batches(s)]).double().numpy()
    assert rows.shape == (400, 25) and src.d_in == 25
    grays = [_gray_standardised(a) for a in arrays]
    for row, (i, top, left) in zip(rows, src.positions):
        p = grays[i][top : top + 5, left : left + 5].ravel()
        np.testing.assert_allclose(row, p - p.mean(), atol=1e-5)
    # positions cover both images and stay inside them
    assert set(src.positions[:, 0]) == {0, 1}
    for i, top, left in src.positions:
        assert 0 <= top <= grays[i].shape[0] - 5 and 0 <= left <= grays[i].shape[1] - 5


def test_zca_whitens_train_patches_to_the_identity_off_the_dc_direction(tmp_path):
    _write_images(tmp_path, sizes=((64, 64),), seed=1)
    # neighbouring pixels correlated: smooth the noise so whitening has something to undo
    a = np.asarray(Image.open(tmp_path / "img0.png").convert("L"), dtype=np.float64)
    smooth = (a + np.roll(a, 1, 0) + np.roll(a, 1, 1) + np.roll(a, (1, 1), (0, 1))) / 4
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "img0.png")
    cfg = {"images": str(tmp_path), "patch": 4, "n_patches": 3000, "seed": 3}
    raw = ImageSource(ImageSourceConfig(**cfg, whiten="none"))
    white = ImageSource(ImageSourceConfig(**cfg, whiten="zca", zca_epsilon=1e-3))
    x = torch.cat([b.acts for b in raw.iter_batches("train")]).double().numpy()
    z = torch.cat([b.acts for b in white.iter_batches("train")]).double().numpy()
    # direct numpy: z = x W with W = C^(-1/2) on the non-DC subspace (patch means removed, so C is singular)
    xc = x - x.mean(0)
    evals, evecs = np.linalg.eigh(xc.T @ xc / len(x))
    evals = np.clip(evals, 0, None)
    eps = 1e-3 * evals.mean()
    w = (evecs * (1 / np.sqrt(evals + eps))) @ evecs.T
    np.testing.assert_allclose(z, x @ w, rtol=1e-4, atol=1e-4)
    zc = z - z.mean(0)
    cov = zc.T @ zc / len(z)
    np.testing.assert_allclose(cov, (evecs * (evals / (evals + eps))) @ evecs.T, atol=1e-4)
    dc = np.full((16, 16), 1 / 16)
    np.testing.assert_allclose(cov, np.eye(16) - dc, atol=0.02)  # white everywhere except the removed DC
    assert np.allclose(white.whitening, white.whitening.T)  # ZCA: the symmetric whitening


def test_config_round_trip_and_noise_control_is_reproducible():
    cfg = ImageSourceConfig(images="noise", patch=6, n_patches=500, seed=4)
    again = source_config_from_dict(cfg.to_dict())
    assert again == cfg
    a = next(open_source(cfg).iter_batches("eval")).acts
    b = next(open_source(again).iter_batches("eval")).acts
    assert torch.equal(a, b) and a.shape == (25, 36)


def test_bad_input_is_one_line(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image") as e:
        ImageSource(ImageSourceConfig(images=str(tmp_path), patch=4, n_patches=10))
    assert "\n" not in str(e.value)
    (tmp_path / "broken.jpg").unlink()
    with pytest.raises(DataError, match="patch 64 is larger than every image") as e:
        ImageSource(ImageSourceConfig(images=str(tmp_path), patch=64, n_patches=10))
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        ImageSource(ImageSourceConfig(images=str(tmp_path / "empty"), patch=4))
    with pytest.raises(DataError, match="not a folder of images"):
        ImageSource(ImageSourceConfig(images=str(tmp_path / "nothing-here"), patch=4))
    with pytest.raises(ConfigError, match="source.whiten"):
        ImageSourceConfig(whiten="pca")


@pytest.mark.parametrize("seed", range(6))
def test_gabor_fit_recovers_synthetic_gabor_parameters(seed):
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, math.pi)
    su, sv, freq = rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.5), rng.uniform(0.1, 0.3)
    params = np.array(
        [
            rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2),
            *rng.uniform(4, 8, 2),
            theta,
            su,
            sv,
            freq,
            rng.uniform(0, 2 * math.pi),
        ]
    )
    fit = fit_gabor(gabor(params, (12, 12)))
    assert fit["r2"] > 0.999
    d_orient = abs((math.degrees(theta) - fit["orientation"] + 90) % 180 - 90)  # orientation is mod 180
    assert d_orient < 0.5
    assert fit["frequency"] == pytest.approx(freq, abs=1e-3)
    assert fit["sigma_u"] == pytest.approx(su, rel=1e-2) and fit["sigma_v"] == pytest.approx(sv, rel=1e-2)
    assert (fit["x0"], fit["y0"]) == pytest.approx((params[1], params[2]), abs=1e-2)


def test_gabor_fit_rejects_white_noise_and_kurtosis_known_values():
    rng = np.random.default_rng(0)
    r2 = [fit_gabor(rng.standard_normal((12, 12)))["r2"] for _ in range(5)]
    assert max(r2) < 0.5 < GABOR_R2
    assert math.isnan(fit_gabor(np.zeros((12, 12)))["r2"])
    gauss = torch.from_numpy(rng.standard_normal(200_000))
    assert abs(excess_kurtosis(gauss)) < 0.05
    laplace = torch.from_numpy(rng.laplace(size=200_000))
    assert excess_kurtosis(laplace) == pytest.approx(3.0, abs=0.2)  # Laplace: excess kurtosis 3


def test_eval_of_an_image_run_has_atoms_and_gabor_fits(tmp_path):
    from sparsecode.eval.report import evaluate_run
    from sparsecode.run import RunConfig
    from sparsecode.sae import ARCHITECTURES
    from sparsecode.train import TrainConfig, Trainer

    sc = ImageSourceConfig(images="noise", patch=6, n_patches=4000)
    cfg = RunConfig(
        source=sc,
        sae=ARCHITECTURES["topk"].config_class(d_in=36, n_latents=16, k=4),
        train=TrainConfig(tokens=8192, batch_size=1024),
    )
    run = tmp_path / "run"
    Trainer(cfg, run, open_source(sc), progress=False).fit()
    r = evaluate_run(run, progress=False, quick=True)
    im = r["images"]
    assert im["patch_shape"] == [6, 6] and im["live_atoms"] == len(im["atoms"]) > 0
    assert 0.0 <= im["gabor_like_fraction"] <= 1.0
    assert {"orientation", "frequency", "sigma_u", "sigma_v", "r2"} <= set(im["atoms"][0])
    html = (run / "report.html").read_text()
    assert "Image atoms" in html and "dictionary atoms" in html
    assert (run / "atoms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_and_eval_images_from_the_command_line(tmp_path, capsys):
    from sparsecode.cli import main

    _write_images(tmp_path)
    out = tmp_path / "run"
    base = ["train", "--images", str(tmp_path), "--n-patches", "3000", "--latents", "16", "--k", "3", "--quiet"]
    assert main([*base, "--patch", "5", "--tokens", "4096", "--batch-size", "1024", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["kind"] == "images" and config["source"]["patch"] == 5
    assert main(["eval", str(out), "--quick", "--quiet"]) == 0
    assert "image atoms:" in capsys.readouterr().out
    # bad input: one line, exit 2, no run folder left behind
    assert main([*base, "--patch", "64", "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: patch 64 is larger than every image") and "\n" not in err
    assert not (tmp_path / "big").exists()
    assert main(["train", "--activations", "x.npy", "--patch", "8", "--out", str(tmp_path / "x")]) == 2
    assert "--patch applies to an image source" in capsys.readouterr().err


def test_dashboard_shows_an_image_runs_top_examples_as_the_patches_they_are(tmp_path):
    import base64
    import io

    from fastapi.testclient import TestClient

    from sparsecode.cli import main
    from sparsecode.dashboard import create_app
    from sparsecode.run import load_run
    from sparsecode.sources.images import load_images

    _write_images(tmp_path)
    run = tmp_path / "run"
    args = ["train", "--images", str(tmp_path), "--n-patches", "3000", "--latents", "16", "--k", "3", "--quiet"]
    assert main([*args, "--patch", "5", "--tokens", "4096", "--batch-size", "1024", "--out", str(run)]) == 0
    assert main(["features", str(run), "--quiet", "--top", "4"]) == 0
    loaded = load_run(run)
    source = open_source(loaded.config.source)
    with torch.inference_mode():
        latents = loaded.sae.encode(torch.cat([b.acts for b in source.iter_batches("eval")]))  # (150, 16)
    images = [img for _, img in load_images(str(tmp_path))]
    with TestClient(create_app(run)) as client:
        fid = next(f["id"] for f in client.get("/features.json?filter=alive").json()["features"])
        feature = client.get(f"/features/{fid}.json").json()
        page = client.get(f"/features/{fid}").text
        fires = client.get("/fires.json?text=hello")
    top = feature["contexts"]["top"]
    assert top[0]["activation"] == pytest.approx(float(latents[:, fid].max()), rel=1e-4)
    assert fires.status_code == 404 and "this run was trained on image patches" in fires.json()["error"]
    assert 'href="/fires"' not in page
    for c in top:
        row = c["tokens"][0]["id"]  # the patch's row in the source: its eval activation is the context's
        assert c["activation"] == pytest.approx(float(latents[row - source.n_train, fid]), rel=1e-4)
        img, y, x = source.positions[row]
        raw = images[img][y : y + 5, x : x + 5]
        png = Image.open(io.BytesIO(base64.b64decode(c["patch"].split(",", 1)[1])))
        shown = np.asarray(png, dtype=np.float64)  # the raw patch stretched to 0..255
        assert shown.shape == (5, 5)
        np.testing.assert_allclose(shown, (raw - raw.min()) / (raw.max() - raw.min()) * 255, atol=0.51)
    assert feature["atom"].startswith("data:image/png;base64,")
    assert page.count('class="patch"') == len(top) + len(feature["contexts"]["quantile"])
    assert 'id="atom"' in page and 'id="steer"' not in page
