"""Import/export of peer formats, against checkpoints written by the peer libraries themselves.

tests/fixtures/interop/<format>/<case>/ holds a checkpoint (``sae/``) and the library's own encode/decode outputs
on fixed inputs (``reference.safetensors``); ``bench/interop_fixtures.py`` wrote them in the bench environment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_toy import run_cli
from safetensors.torch import load_file

from sparsecode.errors import ConfigError, DataError
from sparsecode.interop import detect, export_sae, load, read_dictionary
from sparsecode.interop.hooknames import FAMILIES, Placement, module_to_tl, tl_to_module

FIXTURES = Path(__file__).parent / "fixtures" / "interop"
CASES = sorted(p.parent for p in FIXTURES.glob("*/*/case.json"))
TOL = 1e-5


def _case(folder: Path) -> dict:
    return json.loads((folder / "case.json").read_text())


def test_fixtures_cover_every_format_and_architecture():
    seen = {(c["format"], c.get("arch") or "refused") for c in map(_case, CASES)}
    assert {f for f, _ in seen} == {"saelens", "sparsify", "dictionary_learning", "gemmascope"}
    names = {f"{p.parent.name}/{p.name}" for p in CASES}
    for needed in (
        "saelens/standard",
        "saelens/topk",
        "saelens/batchtopk",
        "saelens/jumprelu",
        "saelens/gated",
        "saelens/transcoder",
        "saelens/skip_transcoder",
        "sparsify/sae",
        "sparsify/transcoder",
        "sparsify/skip_transcoder",
        "dictionary_learning/autoencoder",
        "dictionary_learning/topk",
        "dictionary_learning/batchtopk",
        "dictionary_learning/jumprelu",
        "dictionary_learning/matryoshka_batchtopk",
        "gemmascope/jumprelu",
    ):
        assert needed in names


@pytest.mark.parametrize("folder", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_import_reproduces_the_peer_library(folder):
    case = _case(folder)
    path = folder / case["path"]
    assert detect(path) == case["format"]
    if case.get("refusal"):
        with pytest.raises(DataError, match=case["refusal"]) as e:
            read_dictionary(path)
        assert "\n" not in str(e.value)
        return
    imported = read_dictionary(path)
    assert imported.sae.cfg.arch == case["arch"]
    ref = load_file(str(folder / "reference.safetensors"))
    with torch.no_grad():
        latents = imported.encode(ref["x"])  # (64, n_latents)
        recon = imported.sae.reconstruct(ref["x"], latents)  # (64, d_out)
    assert 0 < int((ref["latents"] != 0).sum()) < ref["latents"].numel()  # the reference is not trivial
    assert torch.equal(latents != 0, ref["latents"] != 0)
    assert float((latents - ref["latents"]).abs().max()) <= TOL
    assert float((recon - ref["recon"]).abs().max()) <= TOL


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_export_then_import_is_the_same_dictionary(tmp_path, fmt):
    """sparsecode -> peer layout -> sparsecode gives back the same encode/decode (the peers' own loaders are checked
    by bench/interop_fixtures.py --check, which needs the bench environment)."""
    from sparsecode.sae import TopKConfig, build_sae

    sae = build_sae(TopKConfig(d_in=32, n_latents=64, k=5, seed=3)).eval()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    out = export_sae(sae, fmt, tmp_path / "exported", hook="h.0" if fmt == "sparsify" else "blocks.0.hook_resid_post")
    back = read_dictionary(out)
    x = torch.randn(50, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(back.encode(x), sae.encode(x), atol=TOL)
        assert torch.allclose(back.sae(x), sae(x), atol=TOL)
    assert back.hook == ("h.0" if fmt == "sparsify" else "blocks.0.hook_resid_post")


def test_export_refuses_what_the_peer_cannot_hold(tmp_path):
    from sparsecode.sae import BatchTopKConfig, ReLUConfig, build_sae

    with pytest.raises(ConfigError, match="sparsify has only TopK"):
        export_sae(build_sae(ReLUConfig(d_in=8, n_latents=16)), "sparsify", tmp_path / "a")
    with pytest.raises(ConfigError, match="relative to each row's norm"):
        export_sae(build_sae(BatchTopKConfig(d_in=8, n_latents=16, k=2)), "saelens", tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bad input
def _copy(case: str, tmp_path: Path) -> Path:
    dst = tmp_path / case.replace("/", "_")
    shutil.copytree(FIXTURES / case / "sae", dst)
    return dst


def test_shapes_that_disagree_with_the_config(tmp_path):
    sae = _copy("saelens/topk", tmp_path)
    cfg = json.loads((sae / "cfg.json").read_text())
    (sae / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 128}))
    with pytest.raises(DataError, match=r"W_enc has shape \(32, 64\), cfg.json \(d_in 32, d_sae 128\) implies"):
        read_dictionary(sae)
    coder = _copy("sparsify/sae", tmp_path) / "h.0"
    cfg = json.loads((coder / "cfg.json").read_text())
    (coder / "cfg.json").write_text(json.dumps({**cfg, "d_in": 16}))
    with pytest.raises(DataError, match="encoder.weight has shape"):
        read_dictionary(coder)


class Custom:
    """Unpickling this needs this module's class: exactly what weights_only=True refuses."""

    def __init__(self) -> None:
        self.w = torch.zeros(2)


def test_a_pickle_that_needs_arbitrary_classes_is_refused(tmp_path):
    ae = _copy("dictionary_learning/topk", tmp_path)
    torch.save({"encoder.weight": Custom()}, ae / "ae.pt")
    with pytest.raises(DataError, match="arbitrary Python classes"):
        read_dictionary(ae)


def test_missing_files_unknown_and_ambiguous_formats(tmp_path):
    sae = _copy("saelens/topk", tmp_path)
    (sae / "sae_weights.safetensors").unlink()
    with pytest.raises(DataError, match="unknown format"):
        detect(sae)
    with pytest.raises(DataError, match="sae_weights.safetensors: file not found"):
        read_dictionary(sae, format="saelens")
    both = _copy("saelens/jumprelu", tmp_path)
    shutil.copy(FIXTURES / "gemmascope/jumprelu/sae/params.npz", both)
    with pytest.raises(DataError, match="ambiguous.*saelens and gemmascope.*--format"):
        detect(both)
    assert read_dictionary(both, format="gemmascope").format == "gemmascope"
    with pytest.raises(DataError, match="not found"):
        read_dictionary(tmp_path / "nowhere")


def test_several_sparsify_hook_points_ask_for_one(tmp_path):
    root = tmp_path / "save"
    shutil.copytree(FIXTURES / "sparsify/sae/sae/h.0", root / "h.0")
    shutil.copytree(FIXTURES / "sparsify/sae/sae/h.0", root / "h.1")
    with pytest.raises(DataError, match=r"several hook points \(h.0, h.1\)"):
        read_dictionary(root)
    assert read_dictionary(root / "h.1").hook == "h.1"


# --------------------------------------------------------------------------- hook names
def test_hook_names_round_trip_for_every_family():
    for family, fam in FAMILIES.items():
        for hook in fam.points:
            name = f"blocks.7.{hook}"
            point = tl_to_module(name, family)
            back = module_to_tl(point, family)
            # two TransformerLens names may share a module (hook_mlp_in is hook_resid_mid): same point either way
            assert tl_to_module(back, family) == point, (family, name)
    assert tl_to_module("blocks.6.hook_resid_post", "gpt2") == Placement("transformer.h.6", "output")
    assert tl_to_module("blocks.6.hook_resid_pre", "llama") == Placement("model.layers.6", "input")
    assert tl_to_module("blocks.2.hook_mlp_out", "gpt_neox") == Placement("gpt_neox.layers.2.mlp", "output")
    assert tl_to_module("blocks.3.hook_resid_post", "bert") == Placement("encoder.layer.3", "output")
    with pytest.raises(ConfigError, match="give --hook"):
        tl_to_module("blocks.0.hook_resid_post", "t5")


def test_resid_names_against_hidden_states(tiny_gpt2_dir):
    """The off-by-one: hidden_states[i] is the input of layer i (= output of layer i-1); the last one has the final
    norm applied, so it is not the last block's output."""
    from transformers import AutoModelForCausalLM

    from sparsecode.hooks import HookPoint, run_and_capture

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir)).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states

    def at(name: str) -> torch.Tensor:
        point = tl_to_module(name, "gpt2")
        with torch.no_grad():
            return run_and_capture(model, {0: HookPoint.at(model, point.module, point.side)}, ids)[0]

    assert torch.equal(at("blocks.0.hook_resid_pre"), hidden[0])
    assert torch.equal(at("blocks.0.hook_resid_post"), hidden[1])
    assert torch.equal(at("blocks.1.hook_resid_pre"), hidden[1])
    got = at("blocks.1.hook_resid_post")
    assert not torch.allclose(got, hidden[2])  # hidden_states[-1] went through ln_f


# --------------------------------------------------------------------------- hub, load()
def _hub_cache(root: Path, repo: str, files: dict[str, Path]) -> Path:
    """A cache folder as huggingface_hub lays it out: blobs, a snapshot of symlinks, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{repo.replace('/', '--')}"
    for rel, src in files.items():
        blob = base / "blobs" / f"blob{abs(hash(rel))}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, blob)
        link = base / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (rel.count("/") + 2)) / "blobs" / blob.name)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return root


def test_hub_ids_read_the_local_cache_offline(tmp_path, monkeypatch):
    from sparsecode.interop.hub import resolve

    src = FIXTURES / "saelens/topk/sae"
    cache = _hub_cache(tmp_path / "hub", "someone/saes", {f"layer_0/{f.name}": f for f in src.iterdir()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, hint = resolve("someone/saes/layer_0", cache_dir=cache)
    assert hint == "someone/saes/layer_0" and (path / "cfg.json").is_file()
    ref = load_file(str(FIXTURES / "saelens/topk/reference.safetensors"))
    with torch.no_grad():
        assert torch.allclose(read_dictionary(path).encode(ref["x"]), ref["latents"], atol=TOL)
    with pytest.raises(DataError, match="offline"):
        resolve("someone/other-saes", cache_dir=cache)


def test_load_reads_any_format_and_run_folders(tmp_path):
    ref = load_file(str(FIXTURES / "sparsify/sae/reference.safetensors"))
    sae = load(FIXTURES / "sparsify/sae/sae")
    with torch.no_grad():
        assert torch.allclose(sae.encode(ref["x"]), ref["latents"], atol=TOL)
    sae.save(tmp_path / "sae.safetensors")
    assert torch.equal(load(tmp_path / "sae.safetensors").W_dec, sae.W_dec)
    import sparsecode

    assert torch.equal(sparsecode.load(tmp_path / "sae.safetensors").W_dec, sae.W_dec)


# --------------------------------------------------------------------------- runs: import -> eval, features, serve
@pytest.mark.parametrize("case", ["saelens/topk", "sparsify/sae"])
def test_imported_run_goes_through_eval_features_and_serve(tmp_path, tiny_gpt2_dir, text_corpus, case):
    """The fixtures read GPT-2's block 0 output (TransformerLens blocks.0.hook_resid_post; sparsify h.0), 32 wide
    like the tiny GPT-2: imported, they are ordinary runs."""
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app
    from sparsecode.eval import evaluate_run
    from sparsecode.features import FeaturesConfig, build_features
    from sparsecode.run import load_run

    out = tmp_path / "run"
    r = run_cli(
        "import", str(FIXTURES / case / "sae"), "--out", str(out), "--model", str(tiny_gpt2_dir),
        "--corpus", str(text_corpus),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "hook transformer.h.0 (output)" in r.stdout
    run = load_run(out)
    assert (run.config.source.hook, run.config.source.hook_side) == ("transformer.h.0", "output")
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "sparsecode-run" and config["version"] >= 1
    assert config["imported_from"]["format"] == case.split("/")[0]
    ref = load_file(str(FIXTURES / case / "reference.safetensors"))
    with torch.no_grad():
        assert torch.allclose(run.sae.encode(ref["x"]), ref["latents"], atol=TOL)

    result = evaluate_run(out, max_rows=512, splice_chunks=2, progress=False, quick=True)
    assert result["arch"] == "topk" and 0 < result["l0"] <= 6
    assert (out / "eval.json").is_file()
    summary = build_features(out, FeaturesConfig(max_tokens=400, top_n=3), progress=False)
    assert summary["n_latents"] == 64 and summary["n_tokens"] > 0
    with TestClient(create_app(out)) as client:
        listing = client.get("/features.json")
        assert listing.status_code == 200
        fires = client.get("/fires.json", params={"text": "The quick brown fox."})
        assert fires.status_code == 200


def _one_line_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_bad_input_writes_nothing(tmp_path, tiny_gpt2_dir):
    out = tmp_path / "run"
    bad_shape = _copy("saelens/topk", tmp_path)
    cfg = json.loads((bad_shape / "cfg.json").read_text())
    (bad_shape / "cfg.json").write_text(json.dumps({**cfg, "d_in": 48}))
    pickled = _copy("dictionary_learning/topk", tmp_path)
    torch.save({"encoder.weight": Custom()}, pickled / "ae.pt")
    cases = [
        ((str(FIXTURES / "saelens/abstopk/sae"),), "abstopk"),
        ((str(FIXTURES / "sparsify/groupmax/sae"),), "groupmax"),
        ((str(bad_shape),), "W_enc has shape (32, 64)"),
        ((str(pickled),), "arbitrary Python classes"),
        ((str(tmp_path / "missing"),), "not found"),
        ((str(tmp_path),), "unknown format"),
        ((str(FIXTURES / "sparsify/sae/sae"),), "--model"),  # sparsify does not record its model
        (
            (str(FIXTURES / "saelens/topk/sae"), "--model", str(tiny_gpt2_dir), "--hook", "blocks.0.hook_foo"),
            "hook_foo",
        ),
    ]
    from sparsecode.errors import SparsecodeError
    from sparsecode.interop.runs import import_run

    for args, needle in cases:
        with pytest.raises(SparsecodeError) as e:
            import_run(args[0], out, model=args[2] if len(args) > 2 else None, hook=args[4] if len(args) > 4 else None)
        assert needle in str(e.value) and "\n" not in str(e.value)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]
    _one_line_error(run_cli("import", *cases[2][0], "--out", str(out)), cases[2][1])  # the CLI prints it as one line
    assert not out.exists()


def test_cli_export_writes_peer_layouts(tmp_path, tiny_gpt2_dir):
    run = tmp_path / "run"
    assert (
        run_cli(
            "import", str(FIXTURES / "saelens/topk/sae"), "--out", str(run), "--model", str(tiny_gpt2_dir)
        ).returncode
        == 0
    )
    r = run_cli("export", str(run), "--format", "sparsify", "--out", str(tmp_path / "sp"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sp" / "h.0" / "cfg.json").is_file()  # sparsify names modules relative to the base model
    r = run_cli("export", str(run), "--format", "saelens", "--out", str(tmp_path / "sl"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post" and cfg["architecture"] == "topk"
    ref = load_file(str(FIXTURES / "saelens/topk/reference.safetensors"))
    for folder in (tmp_path / "sl", tmp_path / "sp" / "h.0"):
        with torch.no_grad():
            assert torch.allclose(read_dictionary(folder).encode(ref["x"]), ref["latents"], atol=TOL)
    _one_line_error(run_cli("export", str(run), "--format", "saelens", "--out", str(tmp_path / "sl")), "already exists")


def test_embedded_models_are_named_by_hub_id_outside_and_embedded_inside(tmp_path):
    """A dictionary for MiniLM's hub id uses the embedded copy (source.model null: works offline); exporting names
    the hub id again. BERT names its layers encoder.layer.L and is not wrapped in an LM head."""
    from sparsecode.interop.runs import export_run, import_run

    sae = _copy("saelens/topk", tmp_path)
    cfg = json.loads((sae / "cfg.json").read_text())
    cfg["metadata"].update(model_name="sentence-transformers/all-MiniLM-L6-v2", hook_name="blocks.3.hook_resid_post")
    (sae / "cfg.json").write_text(json.dumps(cfg))
    r = import_run(str(sae), tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["source"]["model"] is None and config["source"]["hook"] == "encoder.layer.3"
    assert r["hook"] == "encoder.layer.3 (output)"
    out = export_run(tmp_path / "run", "saelens", tmp_path / "exported")
    assert (out["model"], out["hook"]) == ("sentence-transformers/all-MiniLM-L6-v2", "blocks.3.hook_resid_post")


def test_run_configs_name_models_portably(tmp_path, monkeypatch, minilm_dir, tiny_gpt2_dir):
    """config.json records the embedded model's folder as null and a hub-cache snapshot as its hub id (which the
    cache resolves again); any other folder as given. A run written before transcoders had an 'activation' loads."""
    from huggingface_hub import constants

    from sparsecode.run import RunConfig
    from sparsecode.sae import TranscoderConfig
    from sparsecode.sources import ModelSourceConfig

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-gpt2" / "snapshots" / ("ab" * 20)
    shutil.copytree(tiny_gpt2_dir, snapshot)
    (cache / "models--someone--tiny-gpt2" / "refs").mkdir()
    (cache / "models--someone--tiny-gpt2" / "refs" / "main").write_text("ab" * 20)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    sae = TranscoderConfig(d_in=32, n_latents=64, k=4)
    for given, recorded in ((str(snapshot), "someone/tiny-gpt2"), (str(minilm_dir), None), (str(tiny_gpt2_dir),) * 2):
        d = RunConfig(source=ModelSourceConfig(model=given, hook="transformer.h.0"), sae=sae).to_dict()
        assert d["source"]["model"] == recorded and d["version"] == 1
    old = RunConfig(source=ModelSourceConfig(model=None, hook="encoder.layer.3"), sae=sae).to_dict()
    del old["sae"]["activation"]  # as written before imported transcoders could be ReLU/JumpReLU
    assert RunConfig.from_dict(old).sae.activation == "topk"


def test_gemma_scope_paths_name_hook_and_model():
    from sparsecode.interop.gemmascope import names_from

    assert names_from("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71") == (
        "blocks.20.hook_resid_post",
        "google/gemma-2-2b",
    )
    assert names_from("google/gemma-scope-9b-pt-mlp/layer_3/width_131k/average_l0_10")[0] == "blocks.3.hook_mlp_out"
    assert names_from("/data/my_sae") == (None, None)
    assert tl_to_module("blocks.20.hook_mlp_out", "gemma2") == Placement(
        "model.layers.20.post_feedforward_layernorm", "output"
    )
