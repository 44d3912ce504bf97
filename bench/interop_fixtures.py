"""Checkpoints written by the real peer libraries, for sparsecode's import/export tests (tests/test_interop.py).

Run in the bench environment, where the peers are installed (never in the product's dependencies):

    make bench-setup
    PYTHONPATH=src .venv-bench/bin/python bench/interop_fixtures.py            # writes tests/fixtures/interop/
    PYTHONPATH=src .venv-bench/bin/python bench/interop_fixtures.py --check    # export -> peer loader -> encode

Writing: for every format and architecture, the peer library builds a tiny dictionary (d_in 32, 64 latents; the
width of the tests' tiny GPT-2), its parameters are set to seeded random values in a useful range (so biases and
thresholds matter), and the library saves it with its own save function. Beside it, ``reference.safetensors`` holds
fixed inputs ``x`` (64, d_in), the library's own ``latents = encode(x)`` (64, n_latents) and ``recon = decode(latents)``
(64, d_out). ``case.json`` says what sparsecode should make of it: the architecture, or the one-line refusal.

Checking (``--check``): every fixture is imported with sparsecode, exported to the SAELens and sparsify layouts where
the architecture maps, loaded back with the peer's own loader, and the peer's encode/decode on the same inputs is
compared with sparsecode's. Prints one line per pair and exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its triton decoder needs a GPU; the eager one is exact

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "interop"
D_IN, N_LATENTS, N_ROWS, K = 32, 64, 64, 6
TOL = 1e-5


def _inputs(d_in: int = D_IN) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(N_ROWS, d_in, generator=g) * 2.0 + 0.5  # (rows, d_in)


@torch.no_grad()
def _randomise(module: torch.nn.Module, seed: int, thresholds: float = 0.5) -> None:
    """Seeded random values for every parameter and float buffer: weights ~ N(0, 1/d), biases ~ N(0, 0.3),
    thresholds ~ U(0, 2*thresholds) (positive, as trained ones are), decoder rows at non-unit norms."""
    g = torch.Generator().manual_seed(seed)
    for name, p in [*module.named_parameters(), *module.named_buffers()]:
        if not p.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if "threshold" in leaf:
            p.copy_(torch.rand(p.shape, generator=g) * 2 * thresholds)
            if leaf.startswith("log_"):
                p.copy_(p.clamp_min(1e-3).log())
        elif p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * (0.5 + torch.rand(1, generator=g)))
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _write_case(folder: Path, meta: dict, x: torch.Tensor, latents: torch.Tensor, recon: torch.Tensor) -> None:
    save_file(
        {"x": x.contiguous(), "latents": latents.detach().contiguous(), "recon": recon.detach().contiguous()},
        str(folder / "reference.safetensors"),
    )
    (folder / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {folder.relative_to(ROOT)}: {meta.get('arch') or 'refused'}")


# --------------------------------------------------------------------------- SAELens
def _saelens_cases() -> None:
    from sae_lens import SAE
    from sae_lens.saes import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
        Transcoder,
        TranscoderConfig,
    )
    from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    lib = f"sae-lens {version('sae-lens')}"
    hook = "blocks.0.hook_resid_post"

    def meta(**kw):
        return SAEMetadata(hook_name=kw.pop("hook_name", hook), model_name="gpt2", **kw)

    def common(**kw):
        return {"d_in": D_IN, "d_sae": N_LATENTS, **kw}

    # name -> (sae, how to save: "model" (inference save_model) / "inference" (training SAE's inference export) /
    #          "training" (training checkpoint), expected sparsecode arch or None, refusal substring)
    cases = {
        "standard": (StandardSAE(StandardSAEConfig(**common(metadata=meta()))), "model", "relu", None),
        "standard_no_bdec": (
            StandardSAE(StandardSAEConfig(**common(apply_b_dec_to_input=False, metadata=meta()))),
            "model",
            "relu",
            None,
        ),
        "topk": (TopKSAE(TopKSAEConfig(**common(k=K, metadata=meta()))), "model", "topk", None),
        "topk_rescaled": (
            TopKSAE(TopKSAEConfig(**common(k=K, rescale_acts_by_decoder_norm=True, metadata=meta()))),
            "model",
            "topk",
            None,
        ),
        "topk_training": (
            TopKTrainingSAE(TopKTrainingSAEConfig(**common(k=K, metadata=meta()))),
            "training",
            "topk",
            None,
        ),
        "batchtopk": (
            BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common(k=K, metadata=meta()))),
            "inference",
            "jumprelu",
            None,
        ),
        "batchtopk_training": (
            BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common(k=K, metadata=meta()))),
            "training",
            "jumprelu",
            None,
        ),
        "matryoshka_batchtopk": (
            MatryoshkaBatchTopKTrainingSAE(
                MatryoshkaBatchTopKTrainingSAEConfig(**common(k=K, matryoshka_widths=[16, 64], metadata=meta()))
            ),
            "inference",
            "jumprelu",
            None,
        ),
        "jumprelu": (JumpReLUSAE(JumpReLUSAEConfig(**common(metadata=meta()))), "model", "jumprelu", None),
        "gated": (GatedSAE(GatedSAEConfig(**common(metadata=meta()))), "model", "gated", None),
        "transcoder": (
            Transcoder(
                TranscoderConfig(
                    **common(d_out=D_IN, apply_b_dec_to_input=False),
                    metadata=meta(hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"),
                )
            ),
            "model",
            "transcoder",
            None,
        ),
        "skip_transcoder": (
            SkipTranscoder(
                SkipTranscoderConfig(
                    **common(d_out=D_IN, apply_b_dec_to_input=False),
                    metadata=meta(hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"),
                )
            ),
            "model",
            "transcoder",
            None,
        ),
        "jumprelu_transcoder": (
            JumpReLUTranscoder(
                JumpReLUTranscoderConfig(
                    **common(d_out=D_IN, apply_b_dec_to_input=False),
                    metadata=meta(hook_name="blocks.0.hook_mlp_in", hook_name_out="blocks.0.hook_mlp_out"),
                )
            ),
            "model",
            "transcoder",
            None,
        ),
        "jumprelu_skip_transcoder": (
            JumpReLUSkipTranscoder(
                JumpReLUSkipTranscoderConfig(
                    **common(d_out=D_IN, apply_b_dec_to_input=False),
                    metadata=meta(hook_name="blocks.0.hook_mlp_in", hook_name_out="blocks.0.hook_mlp_out"),
                )
            ),
            "model",
            "transcoder",
            None,
        ),
        "layer_norm": (
            StandardSAE(StandardSAEConfig(**common(normalize_activations="layer_norm", metadata=meta()))),
            "model",
            None,
            "layer_norm",
        ),
        "abstopk": (AbsTopKSAE(AbsTopKSAEConfig(**common(k=K, metadata=meta()))), "model", None, "abstopk"),
    }
    x = _inputs()
    for i, (name, (sae, how, arch, refusal)) in enumerate(cases.items()):
        folder = OUT / "saelens" / name
        shutil.rmtree(folder, ignore_errors=True)
        sae_dir = folder / "sae"
        _randomise(sae, seed=100 + i)
        if how == "training":
            sae.save_model(sae_dir)  # the training checkpoint layout, training-only buffers included
        elif how == "inference":
            sae.save_inference_model(sae_dir)  # what SAELens hands out after training
        else:
            sae.save_model(sae_dir)
        # the reference: what SAELens's own inference loader makes of a file SAELens exported
        ref_dir = sae_dir
        if how == "training":
            ref_dir = Path(tempfile.mkdtemp()) / "inference"
            sae.save_inference_model(ref_dir)
        with torch.no_grad():
            if refusal:
                latents = recon = torch.zeros(0)
            else:
                loaded = SAE.load_from_disk(str(ref_dir))
                latents = loaded.encode(x)
                recon = loaded.decode(latents)
                if hasattr(loaded, "W_skip"):
                    recon = loaded.forward(x)
        case = {"library": lib, "format": "saelens", "path": "sae", "arch": arch, "how_saved": how}
        if refusal:
            case["refusal"] = refusal
        _write_case(folder, case, x, latents, recon)


# --------------------------------------------------------------------------- sparsify
def _sparsify_cases() -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    lib = f"eai-sparsify {version('eai-sparsify')}"
    cases = {
        # name -> (config kwargs, hook folder, expected arch, refusal)
        "sae": ({"k": K}, "h.0", "topk", None),
        "sae_unnormalised": ({"k": K, "normalize_decoder": False}, "h.0", "topk", None),
        "sae_skip": ({"k": K, "skip_connection": True}, "h.0", "transcoder", None),
        "transcoder": ({"k": K, "transcode": True}, "h.0.mlp", "transcoder", None),
        "skip_transcoder": ({"k": K, "transcode": True, "skip_connection": True}, "h.0.mlp", "transcoder", None),
        "groupmax": ({"k": 8, "activation": "groupmax"}, "h.0", None, "groupmax"),
    }
    x = _inputs()
    for i, (name, (kw, hook_folder, arch, refusal)) in enumerate(cases.items()):
        folder = OUT / "sparsify" / name
        shutil.rmtree(folder, ignore_errors=True)
        coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=N_LATENTS, **kw))
        _randomise(coder, seed=200 + i)
        coder.save_to_disk(folder / "sae" / hook_folder)
        loaded = SparseCoder.load_from_disk(folder / "sae" / hook_folder)
        with torch.no_grad():
            out = loaded.encode(x)
            latents = torch.zeros(N_ROWS, N_LATENTS).scatter_(-1, out.top_indices, out.top_acts)
            recon = loaded.decode(out.top_acts, out.top_indices)
            if loaded.W_skip is not None:
                recon = recon + x @ loaded.W_skip.mT
        case = {"library": lib, "format": "sparsify", "path": "sae", "arch": arch, "hook_folder": hook_folder}
        if refusal:
            case["refusal"] = refusal
        _write_case(folder, case, x, latents, recon)


# --------------------------------------------------------------------------- Gemma Scope
def _gemmascope_cases() -> None:
    """Gemma Scope is a set of released files, not a library: ``params.npz`` is written here in its documented
    layout (w_/W_ names as released, float32), and the reference comes from SAELens's JumpReLUSAE (no b_dec
    subtraction, as SAELens's Gemma Scope loader configures it)."""
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig

    folder = OUT / "gemmascope" / "jumprelu"
    shutil.rmtree(folder, ignore_errors=True)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=N_LATENTS, apply_b_dec_to_input=False))
    _randomise(sae, seed=300)
    (folder / "sae").mkdir(parents=True)
    np.savez(
        folder / "sae" / "params.npz",
        **{k: v.detach().numpy() for k, v in sae.state_dict().items() if k in ("W_enc", "W_dec", "b_enc", "b_dec")},
        threshold=sae.threshold.detach().numpy(),
    )
    x = _inputs()
    with torch.no_grad():
        latents = sae.encode(x)
        recon = sae.decode(latents)
    case = {
        "library": f"documented layout; reference from sae-lens {version('sae-lens')} JumpReLUSAE",
        "format": "gemmascope",
        "path": "sae",
        "arch": "jumprelu",
    }
    _write_case(folder, case, x, latents, recon)


# --------------------------------------------------------------------------- dictionary_learning
DICTIONARY_LEARNING = "dictionary-learning==0.1.0"


def _dictionary_learning_modules(src: Path | None) -> tuple:
    """The released dictionary_learning package's dictionary and trainer modules. Its dependencies (nnsight<0.4 and
    circuitsvis pull in another torch) cannot share the bench environment, so the released wheel is fetched with
    pip (no dependencies) and its modules are imported from there, skipping the package __init__, which only adds
    the nnsight activation buffer. The classes and trainers that build and describe the dictionaries are the
    library's own."""
    import importlib
    import subprocess
    import types
    import zipfile

    if src is None:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", DICTIONARY_LEARNING, "-d", str(tmp)],
            check=True,
        )
        (wheel,) = tmp.glob("*.whl")
        zipfile.ZipFile(wheel).extractall(tmp / "src")
        src = tmp / "src"
    package = types.ModuleType("dictionary_learning")
    package.__path__ = [str(src / "dictionary_learning")]
    sys.modules["dictionary_learning"] = package
    trainers = types.ModuleType("dictionary_learning.trainers")
    trainers.__path__ = [str(src / "dictionary_learning" / "trainers")]
    sys.modules["dictionary_learning.trainers"] = trainers
    names = ("trainers.standard", "trainers.top_k", "trainers.batch_top_k", "trainers.jumprelu")
    names += ("trainers.matryoshka_batch_top_k", "trainers.gdm")
    return tuple(importlib.import_module(f"dictionary_learning.{n}") for n in names)


def _dictionary_learning_cases(src: Path | None) -> None:
    standard, top_k, batch_top_k, jumprelu, matryoshka, gdm = _dictionary_learning_modules(src)
    lib = DICTIONARY_LEARNING.replace("==", " ") + " (released wheel's modules)"
    common = {"steps": 10_000, "activation_dim": D_IN, "dict_size": N_LATENTS, "layer": 0, "lm_name": "gpt2"}
    topk = {**common, "k": K}
    cases = {
        # name -> (trainer, expected arch, scalar threshold to set or None)
        "autoencoder": (standard.StandardTrainer(**common), "relu", None),
        "topk": (top_k.TopKTrainer(**topk), "topk", None),
        "batchtopk": (batch_top_k.BatchTopKTrainer(**topk), "batchtopk", 0.4),
        "jumprelu": (jumprelu.JumpReluTrainer(**common), "jumprelu", None),
        "matryoshka_batchtopk": (
            matryoshka.MatryoshkaBatchTopKTrainer(**topk, group_fractions=[0.25, 0.75]),
            "batchtopk",
            0.4,
        ),
        "gated": (gdm.GatedSAETrainer(**common), "gated", None),
    }
    x = _inputs()
    for i, (name, (trainer, arch, threshold)) in enumerate(cases.items()):
        folder = OUT / "dictionary_learning" / name
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "sae").mkdir(parents=True)
        ae = trainer.ae.cpu()
        _randomise(ae, seed=400 + i)
        if threshold is not None:
            ae.threshold.fill_(threshold)
        # what dictionary_learning's training loop writes: {"trainer": trainer.config} and the state dict
        config = {"trainer": trainer.config, "buffer": {"d_submodule": D_IN, "ctx_len": 128}}
        (folder / "sae" / "config.json").write_text(json.dumps(config, indent=4))
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "sae" / "ae.pt")
        with torch.no_grad():
            latents = ae.encode(x)
            recon = ae.decode(latents)
        case = {"library": lib, "format": "dictionary_learning", "path": "sae", "arch": arch}
        _write_case(folder, case, x, latents, recon)


# --------------------------------------------------------------------------- export check
def _native_dictionaries() -> list:
    """sparsecode's own dictionaries with seeded random weights, one per architecture that may map."""
    from sparsecode.sae import build_sae, sae_config_from_dict

    specs = {
        "topk": {"arch": "topk", "k": K},
        "relu": {"arch": "relu"},
        "jumprelu": {"arch": "jumprelu"},
        "jumprelu_relative": {"arch": "jumprelu", "relative_threshold": True},
        "gated": {"arch": "gated"},
        "batchtopk_raw": {"arch": "batchtopk", "k": K, "rank_relative": False},
        "batchtopk_relative": {"arch": "batchtopk", "k": K},
        "matryoshka": {"arch": "matryoshka", "k": K},
        "transcoder": {"arch": "transcoder", "k": K},
        "transcoder_skip": {"arch": "transcoder", "k": K, "skip": True},
    }
    out = []
    for i, (name, spec) in enumerate(specs.items()):
        sae = build_sae(sae_config_from_dict({"d_in": D_IN, "n_latents": N_LATENTS, **spec}))
        _randomise(sae, seed=500 + i)
        out.append((name, sae))
    return out


def check_exports() -> int:
    """Import every fixture with sparsecode, export to each peer layout the architecture maps to, load with the peer
    library, and compare its encode and forward with sparsecode's on the fixture inputs."""
    from sae_lens import SAE
    from sparsify import SparseCoder

    from sparsecode.errors import SparsecodeError
    from sparsecode.interop import export_sae, read_dictionary

    failures = 0
    x = _inputs()
    pairs = [(f"sparsecode/{name}", sae) for name, sae in _native_dictionaries()]
    for case_file in sorted(OUT.glob("*/*/case.json")):
        case = json.loads(case_file.read_text())
        if not case.get("refusal"):
            folder = case_file.parent
            assert torch.equal(load_file(str(folder / "reference.safetensors"))["x"], x)
            pairs.append((f"{folder.parent.name}/{folder.name}", read_dictionary(folder / case["path"])))
    for name, imported in pairs:
        ours = (imported.sae if hasattr(imported, "sae") else imported).eval()
        with torch.no_grad():
            lat = ours.encode(x)
            rec = ours.reconstruct(x, lat)
        for fmt in ("saelens", "sparsify"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "export"
                try:
                    export_sae(imported, fmt, out)
                except SparsecodeError as e:
                    print(f"{name} -> {fmt}: refused ({e})")
                    continue
                with torch.no_grad():
                    if fmt == "saelens":
                        peer = SAE.load_from_disk(str(out))
                        plat = peer.encode(x)
                        prec = peer.forward(x)
                    else:
                        (hook_dir,) = [p for p in out.iterdir() if p.is_dir()]
                        peer = SparseCoder.load_from_disk(hook_dir)
                        enc = peer.encode(x)
                        plat = torch.zeros_like(lat).scatter_(-1, enc.top_indices, enc.top_acts)
                        prec = peer.decode(enc.top_acts, enc.top_indices)
                        if peer.W_skip is not None:
                            prec = prec + x @ peer.W_skip.mT
            d_lat = float((plat - lat).abs().max())
            d_rec = float((prec - rec).abs().max())
            same = bool(torch.equal(plat != 0, lat != 0))
            ok = d_lat <= TOL and d_rec <= TOL and same
            failures += not ok
            print(
                f"{name} -> {fmt} -> {type(peer).__name__}: max|dlatents| {d_lat:.1e}, "
                f"max|drecon| {d_rec:.1e}, active sets {'identical' if same else 'DIFFER'}: {'ok' if ok else 'FAIL'}"
            )
    print(f"{failures} mismatches")
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="check export -> peer loader -> encode instead of writing")
    p.add_argument("--dictionary-learning-src", type=Path, help="unpacked dictionary-learning wheel (default: fetch)")
    args = p.parse_args()
    import importlib.util

    missing = [name for name in ("sae_lens", "sparsify") if importlib.util.find_spec(name) is None]
    if missing:  # the product's venv never has the peers: nothing to write or check here
        print(f"skipping: {', '.join(missing)} not installed here (run in .venv-bench: make bench-setup)")
        return 0
    torch.manual_seed(0)
    if args.check:
        return check_exports()
    _saelens_cases()
    _sparsify_cases()
    _gemmascope_cases()
    _dictionary_learning_cases(args.dictionary_learning_src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
