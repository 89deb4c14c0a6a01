"""A text model's identity is hashed once per version of its files: every word query checks it, and hashing
MiniLM's weights took longer than the query itself; a changed weight file is still seen."""

import json
import os

from mullama.knn import text_model


def _folder(path, weights: bytes):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_weights_are_hashed_again_only_when_a_file_changes(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "model", b"first weights")
    hashed = []
    real = text_model.hash_files
    monkeypatch.setattr(text_model, "hash_files", lambda files: hashed.append(files) or real(files))
    first = text_model.text_model_identity(str(folder))
    assert text_model.text_model_identity(str(folder)) == first and len(hashed) == 1
    (folder / "model.safetensors").write_bytes(b"other weights")
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = text_model.text_model_identity(str(folder))
    assert len(hashed) == 2 and second.weights_hash != first.weights_hash
    assert not second.same_model(first) and second.dim == 8
