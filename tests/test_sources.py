"""Issue 5: Pipeline.from_pretrained's sources: a transformer file with its companions beside it,
a directory of converted files, a released repository (converted once into the cache through
the converter's seam), a hub repo id (huggingface_hub), and the errors that say what to do."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

import bonsai_sd
from bonsai_sd.demo import demo_files
from bonsai_sd.modelfiles import ModelFileError
from bonsai_sd.sources import resolve_model

DEMO = demo_files()


@pytest.fixture
def converted(tmp_path) -> Path:
    """A directory of converted files (the demo model under other names)."""
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(DEMO.transformer, d / "bonsai-ternary.gguf")
    shutil.copy(DEMO.text_encoder, d / "qwen3.gguf")
    shutil.copy(DEMO.vae, d / "flux2-vae.safetensors")
    (d / "README.md").write_text("not a weight file")
    return d


def test_a_directory_of_converted_files(converted):
    files = resolve_model(converted)
    assert (files.transformer.name, files.text_encoder.name, files.vae.name) == \
        ("bonsai-ternary.gguf", "qwen3.gguf", "flux2-vae.safetensors")
    with bonsai_sd.Pipeline.from_pretrained(converted, threads=1) as pipe:
        assert pipe.files.transformer == converted / "bonsai-ternary.gguf"


def test_a_transformer_file_finds_its_companions(converted):
    files = resolve_model(converted / "bonsai-ternary.gguf")
    assert (files.text_encoder.name, files.vae.name) == ("qwen3.gguf", "flux2-vae.safetensors")


def test_explicit_components_win(converted, tmp_path):
    other_vae = tmp_path / "other-vae.safetensors"
    shutil.copy(DEMO.vae, other_vae)
    assert resolve_model(converted, vae=other_vae).vae == other_vae


def test_several_candidates_must_be_chosen(converted):
    shutil.copy(DEMO.transformer, converted / "bonsai-binary.gguf")
    with pytest.raises(ModelFileError, match="several transformer files .*bonsai-binary.gguf, bonsai-ternary.gguf.*"
                                             "transformer=PATH"):
        resolve_model(converted)
    assert resolve_model(converted / "bonsai-binary.gguf").transformer.name == "bonsai-binary.gguf"


def test_a_missing_component_is_named(converted):
    (converted / "flux2-vae.safetensors").unlink()
    with pytest.raises(ModelFileError, match="no VAE file found; pass it explicitly \\(vae=PATH\\)"):
        resolve_model(converted)


def test_nothing_there(tmp_path):
    with pytest.raises(ModelFileError, match="no such file or directory"):
        resolve_model(tmp_path / "missing" / "model.gguf")


# ---- released repositories -----------------------------------------------------------------

@pytest.fixture
def release(tmp_path) -> Path:
    """A directory shaped like a released Bonsai Image repository (diffusers layout)."""
    repo = tmp_path / "bonsai-image-ternary-4B-unpacked"
    (repo / "transformer").mkdir(parents=True)
    (repo / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    (repo / "transformer" / "config.json").write_text("{}")
    return repo


def fake_converter(monkeypatch) -> list[tuple[str, str]]:
    """Installs a stand-in for bonsai_sd.convert whose convert() writes the demo files."""
    calls: list[tuple[str, str]] = []
    source = {"transformer": DEMO.transformer, "text-encoder": DEMO.text_encoder, "vae": DEMO.vae}

    def convert(src, out, *, component, progress=False):
        calls.append((Path(src).name, component))
        shutil.copy(source[component], out)

    module = types.ModuleType("bonsai_sd.convert")
    module.convert = convert
    monkeypatch.setitem(sys.modules, "bonsai_sd.convert", module)
    return calls


def test_a_release_is_converted_once_into_the_cache(release, tmp_path, monkeypatch):
    calls = fake_converter(monkeypatch)
    cache = tmp_path / "cache"
    first = resolve_model(release, cache_dir=cache)
    assert calls == [(release.name, "transformer"), (release.name, "text-encoder"), (release.name, "vae")]
    assert first.transformer.is_relative_to(cache / "converted")
    assert (first.transformer.name, first.text_encoder.name, first.vae.name) == \
        ("transformer.gguf", "text_encoder.gguf", "vae.safetensors")
    assert resolve_model(release, cache_dir=cache) == first
    assert len(calls) == 3  # not converted again
    with bonsai_sd.Pipeline.from_pretrained(release, cache_dir=cache, threads=1) as pipe:
        assert pipe.files.transformer == first.transformer


def test_a_failed_conversion_leaves_no_cache_entry(release, tmp_path, monkeypatch):
    module = types.ModuleType("bonsai_sd.convert")

    def convert(src, out, *, component, progress=False):
        Path(out).write_bytes(b"partial")
        raise ValueError("ternary code 3 in transformer_blocks.0.attn.to_q.weight")

    module.convert = convert
    monkeypatch.setitem(sys.modules, "bonsai_sd.convert", module)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="ternary code 3"):
        resolve_model(release, cache_dir=cache)
    assert list((cache / "converted").iterdir()) == []


def test_a_release_without_the_converter(release, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bonsai_sd.convert", None)  # import fails
    with pytest.raises(ModelFileError, match="needs converting.*no converter.*bonsai-sd convert"):
        resolve_model(release, cache_dir=tmp_path / "cache")


# ---- hub repo ids --------------------------------------------------------------------------

def test_a_repo_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelFileError, match="pip install huggingface_hub.*huggingface-cli download "
                                             "prism-ml/bonsai-image-ternary-4B-gguf --local-dir DIR"):
        resolve_model("prism-ml/bonsai-image-ternary-4B-gguf")


def test_a_repo_id_offline(monkeypatch):
    hub = types.ModuleType("huggingface_hub")

    def snapshot_download(repo_id, revision=None, cache_dir=None):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    with pytest.raises(ModelFileError, match="could not download 'someone/model'.*couldn't connect.*"
                                             "huggingface-cli download someone/model"):
        resolve_model("someone/model")


def test_a_repo_id_resolves_through_its_snapshot(monkeypatch, converted):
    hub = types.ModuleType("huggingface_hub")
    asked: list[tuple[str, str | None]] = []

    def snapshot_download(repo_id, revision=None, cache_dir=None):
        asked.append((repo_id, revision))
        return str(converted)

    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    files = resolve_model("someone/model", revision="v1")
    assert asked == [("someone/model", "v1")]
    assert files.transformer == converted / "bonsai-ternary.gguf"


def test_a_release_through_the_converter(tmp_path):
    """The seam with the real converter: tiny_klein's set in the released (diffusers) layout is
    converted into the cache and generates."""
    import tiny_klein
    from conftest import SMALL

    repo = tmp_path / "bonsai-image-ternary-4B-unpacked"
    tiny_klein.write_model_set(repo, flavour="ternary", dtype="bf16", layout="diffusers")
    (repo / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    cache = tmp_path / "cache"
    with bonsai_sd.Pipeline.from_pretrained(repo, cache_dir=cache, threads=1, flash_attention=True) as pipe:
        assert pipe.files.transformer.parent.parent == cache / "converted"
        image = pipe("a cat", seed=1, **SMALL)
    assert image.size == (64, 64) and image.parameters["transformer"] == "transformer.gguf"
