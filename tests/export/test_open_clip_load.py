"""open_clip checkpoints, laid out as open_clip writes them, load wherever a model is named: a folder,
a weight file, ``open_clip:ARCH/PATH``, and from a Hugging Face cache in the hub's own layout as
``hf-hub:ORG/NAME`` and ``open_clip:ARCH/TAG``, offline; their embeddings equal a reference
open_clip forward, they are fingerprinted and recorded, and they fine-tune with ``--init``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retrieval.export import export_model
from retrieval.model import load_model
from retrieval.pretrained import file_sha256, resolve_model
from retrieval.towers import open_clip_names

from support.finetune import fine_tune
from support.hf import save_in_hub_cache
from support.open_clip_ref import save_open_clip, tiny_model_cfg

REVISION = "89abcdef0123456789abcdef0123456789abcdef"
TEXTS = ["a red car", "the small dog running", "cat"]


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("oc") / "ViT-Tiny"
    save_open_clip(folder)
    return folder


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _same_as_reference(model, reference) -> None:
    """The toolkit's vectors equal the reference open_clip forward on the same pixels and token ids."""
    pixels = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        assert torch.allclose(model.image_features(pixels), reference.encode_image(pixels), atol=1e-5)
        assert torch.allclose(
            model.text_features(tokens), reference.encode_text(tokens["input_ids"]), atol=1e-5
        )


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_a_folder_and_a_weight_file_load_with_open_clips_embeddings(tmp_path: Path, quick_gelu: bool) -> None:
    reference = save_open_clip(tmp_path / "oc", seed=3, quick_gelu=quick_gelu)
    model = load_model(tmp_path / "oc", device="cpu")
    _same_as_reference(model, reference)
    assert model.source.kind == "open_clip"
    weights = tmp_path / "oc" / "open_clip_model.safetensors"
    assert model.source.info() == {
        "source": "folder",
        "path": str((tmp_path / "oc").resolve()),
        "weights_sha256": file_sha256(weights),
        "format": "open_clip",
        "model": str((tmp_path / "oc").resolve()),
    }
    model.save(tmp_path / "saved")  # a toolkit folder now: the same model, fingerprint included
    assert load_model(tmp_path / "saved", device="cpu").fingerprint() == model.fingerprint()
    by_file = load_model(weights, device="cpu")
    assert by_file.fingerprint() == model.fingerprint()
    assert by_file.source.info()["source"] == "file"
    # the image processor does open_clip's resize + centre crop + normalisation with its statistics
    processor = model.image_tower.processor
    assert processor.crop_size == {"height": 30, "width": 30} and list(processor.image_mean) == [
        0.5,
        0.4,
        0.3,
    ]


def test_a_training_checkpoint_with_module_prefix_and_the_eos_pooling(tmp_path: Path) -> None:
    """open_clip_train's ``epoch_N.pt`` ({"state_dict": {"module.…": …}}) of a model pooling at its EOS id."""
    from support.open_clip_ref import MiniCLIP, eos_last_tokenizer

    torch.manual_seed(5)
    cfg = tiny_model_cfg(pool_type="eos", eos_id=16)
    reference = MiniCLIP(cfg).eval()
    folder = tmp_path / "run"
    folder.mkdir()
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 3, "name": "tiny", "state_dict": state}, folder / "epoch_3.pt")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    eos_last_tokenizer().save_pretrained(folder)
    model = load_model(folder / "epoch_3.pt", device="cpu")
    _same_as_reference(model, reference)
    assert list(model.image_tower.processor.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_open_clip_arch_and_path_uses_the_architectures_config(
    oc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(open_clip_names._ARCHS, "ViT-Tiny", tiny_model_cfg())
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(oc_dir / "open_clip_model.safetensors", lone / "weights.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(oc_dir / name, lone / name)
    with pytest.raises(ValueError, match=r"no open_clip_config\.json beside it.*open_clip:ARCH/"):
        load_model(lone / "weights.safetensors")
    model = load_model(f"open_clip:ViT-Tiny/{lone / 'weights.safetensors'}", device="cpu")
    folder_model = load_model(oc_dir, device="cpu")
    same = folder_model.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in model.state_dict().items())
    # no preprocess_cfg beside the weights: open_clip's defaults (OpenAI's statistics) apply
    assert list(model.image_tower.processor.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert model.source.name == f"open_clip:ViT-Tiny/{(lone / 'weights.safetensors').resolve()}"
    assert load_model(model.source.name, device="cpu").fingerprint() == model.fingerprint()
    with pytest.raises(ValueError, match=r"architecture 'ViT-Nope'.*siamese-retrieval\[open_clip\]"):
        load_model(f"open_clip:ViT-Nope/{lone / 'weights.safetensors'}")


def test_hub_names_resolve_offline_from_the_hubs_cache_layout(
    oc_dir: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = save_in_hub_cache(oc_dir, hf_home, "tiny-org/open-clip-tiny", REVISION)
    reference = load_model(oc_dir, device="cpu")

    model = load_model("hf-hub:tiny-org/open-clip-tiny", device="cpu")
    assert model.source.path == snapshot
    assert model.fingerprint() == reference.fingerprint()
    info = model.source.info()
    assert info == {
        "source": "hub",
        "id": "tiny-org/open-clip-tiny",
        "revision": REVISION,
        "requested_revision": "main",
        "format": "open_clip",
        "model": f"hf-hub:tiny-org/open-clip-tiny@{REVISION}",
    }
    pinned = load_model(info["model"], device="cpu")  # what a collection records loads the same files
    assert pinned.fingerprint() == model.fingerprint()

    monkeypatch.setitem(open_clip_names._TAGS, ("ViT-Tiny", "tiny_s1"), ("tiny-org/open-clip-tiny", {}))
    tagged = load_model("open_clip:ViT-Tiny/tiny_s1", device="cpu")
    assert tagged.fingerprint() == reference.fingerprint()
    assert tagged.source.info()["open_clip"] == "ViT-Tiny/tiny_s1"
    assert tagged.source.name == f"open_clip:ViT-Tiny/tiny_s1@{REVISION}"
    # a plain hub id of an open_clip-only repo is taken for what it is
    assert resolve_model("tiny-org/open-clip-tiny").kind == "open_clip"


def test_offline_errors_name_the_model_the_cache_and_the_command(hf_home: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        load_model("hf-hub:tiny-org/not-cached")
    message = str(caught.value)
    assert "'tiny-org/not-cached'" in message and str(hf_home / "hub") in message
    assert "HF_HUB_OFFLINE is set" in message and "hf download tiny-org/not-cached" in message
    with pytest.raises(FileNotFoundError, match="hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        load_model("open_clip:ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(ValueError, match=r"open_clip:ViT-B-32/no_such_tag is not among.*\[open_clip\]"):
        load_model("open_clip:ViT-B-32/no_such_tag")
    with pytest.raises(ValueError, match=r"expected open_clip:ARCH/TAG"):
        load_model("open_clip:ViT-B-32")
    with pytest.raises(ValueError, match="not a hub id"):
        load_model("hf-hub:not a repo")


def test_architectures_that_do_not_convert_name_the_extra(tmp_path: Path) -> None:
    folder = tmp_path / "rn"
    save_open_clip(folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "convnext_tiny"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"timm's 'convnext_tiny'.*siamese-retrieval\[open_clip\]"):
            load_model(folder)
    else:  # pragma: no cover - with the package the model runs on it
        pytest.skip("the open_clip package is installed here")


def test_an_open_clip_model_fine_tunes_with_init_and_exports_back(
    oc_dir: Path, pairs: Path, tmp_path: Path
) -> None:
    run = fine_tune(oc_dir, pairs, tmp_path / "run", "clip")
    tuned = load_model(run / "final", device="cpu")
    assert tuned.base_model["format"] == "open_clip" and tuned.base_model["path"] == str(oc_dir.resolve())
    result = export_model(tuned, "open_clip", tmp_path / "oc")
    assert max(result.max_difference.values()) <= 1e-4
    again = load_model(tmp_path / "oc", device="cpu")
    assert torch.allclose(again.encode_texts(TEXTS), tuned.encode_texts(TEXTS), atol=1e-5)
    config = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["head_width"] == 8
    assert config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == str((tmp_path / "oc").resolve())


def test_load_then_export_gives_back_open_clips_own_tensors(oc_dir: Path, tmp_path: Path) -> None:
    export_model(oc_dir, "open_clip", tmp_path / "out")
    original = load_file(str(oc_dir / "open_clip_model.safetensors"))
    exported = load_file(str(tmp_path / "out" / "open_clip_model.safetensors"))
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert torch.equal(exported[key], value), key
    config = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"] == {
        "size": 30,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def test_an_open_clip_siglip_converts_to_transformers_siglip(tmp_path: Path) -> None:
    """A timm SigLIP ViT + open_clip's bidirectional text tower, as open_clip writes them, becomes a
    SiglipModel: equal embeddings, temperature and bias kept, and it exports to transformers."""
    from safetensors.torch import save_file

    from support.open_clip_ref import MiniSigLIP, eos_last_tokenizer

    torch.manual_seed(11)
    reference = MiniSigLIP().eval()
    folder = tmp_path / "siglip"
    folder.mkdir()
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MiniSigLIP.config(), "preprocess_cfg": preprocess})
    )
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    eos_last_tokenizer(12).save_pretrained(folder)

    model = load_model(folder, device="cpu")
    assert model.image_tower.backbone.config.model_type == "siglip_vision_model"
    assert model.logit_bias is not None and float(model.logit_bias.detach()) == pytest.approx(-7.0)
    assert float(model.logit_scale.detach()) == pytest.approx(2.3)
    tokens = model.tokenize(TEXTS)
    assert tokens["input_ids"].shape[1] == 12  # padded to the context length, as SigLIP was trained
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(model.image_features(pixels), reference.encode_image(pixels), atol=1e-5)
        assert torch.allclose(
            model.text_features(tokens), reference.encode_text(tokens["input_ids"]), atol=1e-5
        )
    result = export_model(model, "transformers", tmp_path / "hf")
    assert max(result.max_difference.values()) <= 1e-5
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "siglip"


def test_downloads_fetch_open_clips_files_for_open_clip_names_only(
    oc_dir: Path, clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online, the file patterns decide what is downloaded: a repo holding both formats (as LAION's do)
    gives open_clip's files to hf-hub: names and transformers' files to plain hub ids."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    repo = tmp_path / "repo"  # both formats side by side
    shutil.copytree(clip_dir, repo)
    for file in oc_dir.iterdir():
        if file.name.startswith("open_clip_"):
            shutil.copy(file, repo / file.name)
    fetched: list[set[str]] = []

    def fake_snapshot_download(
        repo_id,
        revision=None,
        cache_dir=None,
        local_files_only=False,
        allow_patterns=None,
        ignore_patterns=None,
    ):
        names = [p.name for p in repo.iterdir()]
        kept = set(filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        fetched.append(kept)
        snapshot = tmp_path / "cache" / repo_id.replace("/", "--") / REVISION
        snapshot.mkdir(parents=True, exist_ok=True)
        for name in kept:
            shutil.copy(repo / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    source = resolve_model("hf-hub:laion/both-formats")
    assert source.kind == "open_clip" and source.weights.name == "open_clip_model.safetensors"
    assert "open_clip_config.json" in fetched[-1] and "model.safetensors" not in fetched[-1]
    plain = resolve_model("laion/both-formats-hf")
    assert plain.kind == "transformers"
    assert "model.safetensors" in fetched[-1] and not any(n.startswith("open_clip_") for n in fetched[-1])


def test_an_open_clip_that_fails_to_import_is_named_not_raised(
    oc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_clip imports torchvision, which fails beside a torch it was not built for: converted models
    still load, the others get an error saying so (not torchvision's traceback)."""
    from retrieval.towers import open_clip_files

    fake = tmp_path / "site" / "open_clip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(open_clip_files, "_IMPORT_ERROR", [])
    assert load_model(oc_dir, device="cpu").source.kind == "open_clip"
    folder = tmp_path / "other"
    shutil.copytree(oc_dir, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["layers"] = [1, 1, 1, 1]
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"fails to import here \(RuntimeError: operator torchvision::nms"):
        load_model(folder)
