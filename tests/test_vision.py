"""An image model fed by the image source: rows against a direct forward pass, token -> pixel boxes on planted
images, the command line, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_images import _write_images
from torch import nn

from sparsecode.errors import ConfigError, DataError
from sparsecode.sources import VisionSource, VisionSourceConfig, open_source, source_config_from_dict

SIDE, PATCH = 32, 8
"""The tiny ViT's input side and patch size: a 4 x 4 grid of tokens after [CLS]."""


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A 2-block ViT with random weights and its image processor, saved to a folder (loaded by path)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=SIDE,
        patch_size=PATCH,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return folder


def _photos(folder, sizes=((48, 40), (36, 52)), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    return _write_images(folder, sizes, seed)


def _rows(source, split="train"):
    return torch.cat([b.acts for b in source.iter_batches(split)])


def test_rows_equal_a_direct_forward_of_the_views(tiny_vit, tmp_path):
    from transformers import ViTModel

    arrays = _photos(tmp_path / "img")
    cfg = VisionSourceConfig(model=str(tiny_vit), hook="layers.0", images=str(tmp_path / "img"), views=12, batch_size=5)
    src = VisionSource(cfg)
    assert (src.side, src.grid, src.n_prefix, src.per_view, src.d_in) == (SIDE, (4, 4), 1, 16, 16)
    assert src.num_rows("train") == 11 * 16 and src.num_rows("eval") == 16
    # the pixel values are the view cut from the file, scaled as ViT's processor does: (x / 255 - 0.5) / 0.5
    img, top, left = src.view_positions[0]
    view = arrays[img][top : top + SIDE, left : left + SIDE]
    expected = torch.from_numpy((view / 255 - 0.5) / 0.5).permute(2, 0, 1).float()
    torch.testing.assert_close(src.pixel_values(src.view_positions[:1])[0], expected, atol=1e-6, rtol=0)
    # rows == the hidden states after block 1 at the patch tokens (not [CLS]), view by view
    model = ViTModel.from_pretrained(tiny_vit).eval()
    with torch.inference_mode():
        hidden = model(pixel_values=src.pixel_values(src.view_positions), output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(_rows(src), hidden[:11, 1:].reshape(-1, 16), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_rows(src, "eval"), hidden[11:, 1:].reshape(-1, 16), atol=1e-5, rtol=1e-5)
    # with keep_cls, [CLS] leads each view's rows and covers the whole view
    with_cls = VisionSource(source_config_from_dict({**cfg.to_dict(), "keep_cls": True}))
    rows = _rows(with_cls)
    assert with_cls.per_view == 17
    torch.testing.assert_close(rows, hidden[:11].reshape(-1, 16), atol=1e-5, rtol=1e-5)
    assert with_cls.box(17) == (int(src.view_positions[1][0]), *map(int, src.view_positions[1][1:]), SIDE, SIDE)
    # resuming mid-stream gives the same rows, bit for bit; the config round-trips
    full = _rows(src)
    for start in (7, 16, 80, 11 * 16):
        rest = [b.acts for b in src.iter_batches("train", start_row=start)]
        assert torch.equal(torch.cat(rest) if rest else full[:0], full[start:])
    assert source_config_from_dict(cfg.to_dict()) == cfg


class PatchMean(nn.Module):
    """A hand-built image model: the mean pixel value of each 8 x 8 patch of the input, as tokens (a zero [CLS]
    first) or, with ``feature_map``, as a (batch, 1, h, w) map. Its ``out`` layer is the hook."""

    def __init__(self, feature_map: bool = False):
        super().__init__()
        self.feature_map = feature_map
        self.out = nn.Identity()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        means = nn.functional.avg_pool2d(pixels.mean(1, keepdim=True), PATCH)  # (B, 1, h, w)
        if self.feature_map:
            return self.out(means)
        tokens = means.flatten(2).transpose(1, 2)  # (B, h * w, 1)
        return self.out(torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1))  # (B, 1 + h * w, 1)


@pytest.mark.parametrize("feature_map", [False, True])
def test_each_rows_box_is_the_image_region_its_token_sees(tmp_path, feature_map):
    """Every row of the patch-mean module equals the mean of the image pixels in its box, so the boxes are right."""
    arrays = _photos(tmp_path, sizes=((70, 45), (40, 90)), seed=2)
    cfg = VisionSourceConfig(hook="out", images=str(tmp_path), views=20, image_size=SIDE, batch_size=7)
    src = VisionSource(cfg, model=PatchMean(feature_map))
    assert src.grid == (4, 4) and src.n_prefix == 0 if feature_map else src.n_prefix == 1
    rows = torch.cat([_rows(src), _rows(src, "eval")])[:, 0].numpy()  # (20 * 16,)
    assert len(rows) == 20 * 16
    for row, value in enumerate(rows):
        img, top, left, h, w = src.box(row)
        assert (h, w) == (PATCH, PATCH)
        region = arrays[img][top : top + h, left : left + w]
        assert value == pytest.approx(region.mean() / 255, abs=1e-5)


def test_resized_views_scale_the_boxes(tmp_path):
    """Views cut at twice the input side cover twice the pixels per token: on a linear ramp a token's value is the
    ramp at its box's centre (bicubic resizing keeps a ramp, away from the view's edges)."""
    yy, xx = np.mgrid[0:120, 0:120]
    ramp = (xx + yy).astype(np.float64)  # 0..238
    Image.fromarray(np.repeat(ramp.astype(np.uint8)[..., None], 3, axis=2)).save(tmp_path / "ramp.png")
    cfg = VisionSourceConfig(hook="out", images=str(tmp_path), views=6, image_size=SIDE, crop=2 * SIDE)
    src = VisionSource(cfg, model=PatchMean())
    rows = torch.cat([_rows(src), _rows(src, "eval")])[:, 0].numpy()
    inner = 0
    for row, value in enumerate(rows):
        _, top, left, h, w = src.box(row)
        assert (h, w) == (2 * PATCH, 2 * PATCH)
        view_top, view_left = src.view_positions[row // src.per_view][1:]
        if view_top < top < view_top + 2 * SIDE - h and view_left < left < view_left + 2 * SIDE - w:  # inner cells
            inner += 1
            # PIL's 8-bit bicubic lands 1 above the ramp here; a box one cell off would be 16 away
            assert value * 255 == pytest.approx(ramp[top : top + h, left : left + w].mean(), abs=1.5)
    assert inner == 6 * 4


def test_command_line_trains_on_an_image_model_and_bad_input_is_one_line(tiny_vit, tmp_path, capsys):
    from sparsecode.cli import main

    _photos(tmp_path / "img")
    base = ["train", "--images", str(tmp_path / "img"), "--quiet", "--latents", "8", "--k", "2"]
    out = tmp_path / "run"
    args = ["--model", str(tiny_vit), "--hook", "layers.1", "--views", "24", "--tokens", "512", "--batch-size", "64"]
    assert main([*base, *args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["source"]
    assert config["kind"] == "vision" and config["hook"] == "layers.1" and config["views"] == 24
    _features_show_the_regions(out)
    capsys.readouterr()

    def refused(extra, message):
        bad = tmp_path / "bad"
        assert main([*base, *extra, "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
        assert not bad.exists()

    refused(["--model", str(tiny_vit), "--hook", "layers.7"], "unknown hook 'layers.7'")
    refused(["--model", "othello", "--hook", "transformer.h.0"], "is not an image model")
    refused(["--model", "nobody/no-such-vit", "--hook", "layers.0"], "not found locally and the hub is offline")
    refused(["--model", str(tiny_vit), "--hook", "layers.0", "--patch", "4"], "--patch applies to image patches")
    refused(["--model", str(tiny_vit), "--hook", "layers.0", "--corpus", "x.txt"], "--corpus applies to text model")
    refused(["--model", str(tiny_vit)], "needs --model (a transformers image model) and --hook")
    refused(["--views", "9"], "--views applies to image model sources, not to image patches")
    _photos(tmp_path / "small", sizes=((20, 24),))
    bad = ["train", "--images", str(tmp_path / "small"), "--model", str(tiny_vit), "--hook", "layers.0", "--quiet"]
    assert main([*bad, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: every image is smaller than the model's 32x32 input (smallest 20x24)")
        and "\n" not in err
    )
    assert (
        main(
            [
                *bad,
                "--crop",
                "16",
                "--views",
                "4",
                "--tokens",
                "64",
                "--batch-size",
                "16",
                "--out",
                str(tmp_path / "ok"),
            ]
        )
        == 0
    )


def _features_show_the_regions(run):
    """`sparsecode features` then the dashboard on a trained ViT run: each top example is the SAE's activation on that
    token row, with the row's pixel box and the picture of that region."""
    from fastapi.testclient import TestClient

    from sparsecode.cli import main
    from sparsecode.dashboard import create_app
    from sparsecode.features.vision import MIN_SIDE, region
    from sparsecode.run import load_run

    assert main(["features", str(run), "--quiet", "--top", "3", "--split", "train"]) == 0
    loaded = load_run(run)
    source = open_source(loaded.config.source)
    with torch.inference_mode():
        latents = loaded.sae.encode(_rows(source))  # (train rows, n_latents)
    with TestClient(create_app(run)) as client:
        fid = next(f["id"] for f in client.get("/features.json?filter=alive").json()["features"])
        feature = client.get(f"/features/{fid}.json").json()
        page = client.get(f"/features/{fid}").text
    top = feature["contexts"]["top"]
    assert len(top) == 3 and top[0]["activation"] == pytest.approx(float(latents[:, fid].max()), rel=1e-4)
    for c in top:
        row = c["tokens"][0]["id"]
        assert c["activation"] == pytest.approx(float(latents[row, fid]), rel=1e-4)
        img, y, x, h, w = source.box(row)
        assert c["box"] == {"image": source.image_names[img], "top": y, "left": x, "height": h, "width": w}
        part, _ = region(source.images[img], (y, x, h, w))
        scale = -(-MIN_SIDE // max(part.shape[:2]))
        assert _decode(c["patch"]).shape == (part.shape[0] * scale, part.shape[1] * scale, 3)
    assert page.count('class="patch region"') >= len(top) and "Promoted tokens" not in page


def test_config_checks():
    with pytest.raises(ConfigError, match="source.hook is required"):
        VisionSourceConfig(hook=" ")
    with pytest.raises(ConfigError, match="source.views"):
        VisionSourceConfig(hook="x", views=1)
    with pytest.raises(ConfigError, match="source.model is required"):
        open_source(VisionSourceConfig(hook="x"))
    flat = nn.Sequential(nn.Flatten(1))  # (B, 3 * 8 * 8): neither tokens nor a feature map
    with pytest.raises(DataError, match=r"hook '0' gave \(1, 192\); expected tokens"):
        VisionSource(VisionSourceConfig(hook="0", image_size=8, views=2, images="noise"), model=flat)


def _decode(data_uri: str) -> np.ndarray:
    import base64
    import io

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))


def test_dashboard_shows_the_planted_bright_patch_as_its_units_top_example(tmp_path):
    """Image 0 is dark but for one bright 8 x 8 cell; the patch-mean module's unit, read by a hand-set ReLU latent,
    fires most there: the feature page's top example is that cell's region, outlined, with its pixel box."""
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app
    from sparsecode.explain.store import ExplainStore
    from sparsecode.features import FeaturesConfig, build_features
    from sparsecode.features.vision import OUTLINE
    from sparsecode.run import RunConfig
    from sparsecode.sae import ReLUConfig, build_sae

    dark = np.full((SIDE, SIDE, 3), 20, dtype=np.uint8)
    dark[16:24, 8:16] = 250  # grid cell (2, 1)
    Image.fromarray(dark).save(tmp_path / "a.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(60, 120, (SIDE, SIDE, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    cfg = VisionSourceConfig(hook="out", images=str(tmp_path), views=8, image_size=SIDE)
    source = VisionSource(cfg, model=PatchMean())
    sae = build_sae(ReLUConfig(d_in=1, n_latents=2))
    with torch.no_grad():  # latent 0 = relu(patch mean), latent 1 = relu(-patch mean): never fires
        sae.W_enc.copy_(torch.tensor([[1.0, -1.0]]))
        sae.b_enc.zero_(), sae.b_dec.zero_()
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(source=cfg, sae=sae.cfg).save(run)
    sae.save(run / "sae.safetensors")
    build_features(run, FeaturesConfig(split="train", top_n=3), progress=False, source=source)

    with TestClient(create_app(run)) as client:
        feature = client.get("/features/0.json").json()
        page = client.get("/features/0").text
        fires, fires_json = client.get("/fires?text=hello"), client.get("/fires.json?text=hello")
        attribution = client.get("/attribution.json")
        steer = client.get("/features/0.json?prompt=hello")
    top = feature["contexts"]["top"][0]
    assert top["activation"] == pytest.approx(250 / 255, abs=1e-5)
    assert top["box"] == {"image": str(tmp_path / "a.png"), "top": 16, "left": 8, "height": 8, "width": 8}
    assert top["tokens"][0]["text"] == f"{tmp_path / 'a.png'} (16,8) 8x8"
    shown = _decode(top["patch"])  # the region: rows 8..32, columns 0..24 of image a, enlarged 4 times
    assert shown.shape == (96, 96, 3)
    assert (shown[32:64, 32:64] == 250).all()  # the cell itself, untouched
    assert (shown[30:32, 30:66] == OUTLINE).all() and (shown[64:66, 30:66] == OUTLINE).all()  # outlined around it
    assert (shown[:28] == 20).all() and (shown[:, :28] == 20).all()  # dark context
    # every shown context's box and picture agree with the source
    for c in feature["contexts"]["top"] + feature["contexts"]["quantile"]:
        img, y, x, h, w = source.box(c["tokens"][0]["id"])
        assert c["box"] == {"image": source.image_names[img], "top": y, "left": x, "height": h, "width": w}
        assert c["activation"] == pytest.approx(source.images[img][y : y + h, x : x + w].mean() / 255, abs=1e-5)
    # an image run: no token logits, no steering, no links to the text-only tools, which answer with a message
    assert page.count('class="patch region"') == len(feature["contexts"]["top"]) + len(feature["contexts"]["quantile"])
    assert 'id="steer"' not in page and 'href="/fires"' not in page and 'href="/attribution"' not in page
    assert fires.status_code == fires_json.status_code == attribution.status_code == 404
    message = "What fires here? needs a text model, and this run was trained on an image model"
    assert message in fires.text and fires_json.json()["error"].startswith(message)
    assert steer.status_code == 400 and "steering needs a text model" in steer.json()["error"]
    with pytest.raises(DataError, match=r"explanations are written from text contexts.*images \(vision\)"):
        ExplainStore(run / "features.sqlite")


def test_activation_cache_serves_the_same_rows_and_is_keyed_by_the_image_files(tiny_vit, tmp_path):
    from sparsecode.activations import CachedSource
    from sparsecode.activations.cache import cache_key
    from sparsecode.train.trainer import open_training_source

    _photos(tmp_path / "img")
    cfg = VisionSourceConfig(model=str(tiny_vit), hook="layers.0", images=str(tmp_path / "img"), views=6)
    direct = _rows(VisionSource(cfg))
    cached = open_training_source(cfg, tmp_path / "cache")
    assert isinstance(cached, CachedSource) and not cached.is_cached("train")
    assert torch.equal(_rows(cached), direct) and cached.is_cached("train")  # the first pass writes through
    again = open_training_source(cfg, tmp_path / "cache")
    again.inner._forward = None  # a second pass must not run the model: it reads the shards
    assert torch.equal(_rows(again), direct)
    key = cache_key(cached.inner)
    _photos(tmp_path / "img", seed=5)  # same names, other pixels (and mtimes)
    assert cache_key(VisionSource(cfg)) != key


def test_a_folder_is_read_on_access_and_a_bad_file_is_refused_up_front(tiny_vit, tmp_path):
    arrays = _photos(tmp_path, sizes=[(40, 40)] * 12)
    src = VisionSource(VisionSourceConfig(model=str(tiny_vit), hook="layers.0", images=str(tmp_path), views=30))
    assert len(src.images) == 12 and src.images.shapes == [(40, 40)] * 12
    _rows(src)
    assert len(src.images._cache) <= src.images.keep  # never the whole folder in memory
    for i, a in enumerate(arrays):  # files are taken in name order: img0, img1, img10, img11, img2, ...
        assert np.array_equal(src.images[src.image_names.index(str(tmp_path / f"img{i}.png"))], a)
    good = (tmp_path / "img0.png").read_bytes()
    (tmp_path / "img5.png").write_bytes(good[: len(good) // 2])  # truncated: the header reads, the data does not
    with pytest.raises(DataError, match=r"img5\.png: not a readable image") as e:
        VisionSource(VisionSourceConfig(model=str(tiny_vit), hook="layers.0", images=str(tmp_path), views=30))
    assert "\n" not in str(e.value)
