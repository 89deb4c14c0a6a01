"""The kNN cache mix in the model and the kNN answer baseline, against references written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mullama.config import build_config
from mullama.data.musicqa import QAPair
from mullama.errors import MullamaError
from mullama.eval.knn_baseline import knn_answers
from mullama.knn import ClipIndex
from mullama.knn.build import build_index
from mullama.knn.config import IndexBuildConfig
from mullama.model import KnnMix, MusicLlama
from mullama.store import FeatureStore
from tests.helpers import synthetic_store


def build(store, **options):
    return build_index(build_config(IndexBuildConfig, {"store": str(store), "progress": False, **options}))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("knnmix")
    store = synthetic_store(str(root / "store"), clips=200, per_partition=100)
    model = MusicLlama.create(tiny_llama, store.encoder, device="cpu", seed=3)
    with torch.no_grad():  # a trained-looking aggregator: unequal layer weights and a bias
        model.model.music_adapter.aggregator.weight.copy_(torch.tensor([0.5, -0.2, 0.9, 0.1, 0.3]).view(1, 5, 1))
        model.model.music_adapter.aggregator.bias.fill_(0.05)
    adapter = model.save(root / "adapter")
    build(root / "store", name="features", recipe=f"adapter:{adapter}")
    build(root / "store", name="plain")
    return root, store, model


def reference_mix(store: FeatureStore, query_stack: np.ndarray, k: int, t: float, w: float) -> np.ndarray:
    """docs/knn.md's formula over brute-force neighbours, with the aggregator written out by hand."""
    weights, bias = np.array([0.5, -0.2, 0.9, 0.1, 0.3]), 0.05
    feature = lambda stacks: unit(np.einsum("l,nlh->nh", weights, stacks.astype(np.float64)) + bias)  # noqa: E731
    stored = feature(store.get(store.clip_ids())).astype(np.float16).astype(np.float64)  # the index keeps float16
    f = feature(query_stack[None])[0]
    sims = stored @ f
    top = np.argsort(-sims)[:k]
    a = np.exp(t * sims[top] - (t * sims[top]).max())
    a /= a.sum()
    p = unit(a @ stored[top])
    return unit((1 - w) * f + w * p)


def test_mix_follows_the_published_formula(setup):
    root, store, model = setup
    index = ClipIndex.open(str(root / "store"), "features")
    stack = store.get(["clip00042"])[0] + 0.3  # a stack near, but not in, the index
    adapter = model.model.music_adapter
    from mullama.model.knn_mix import mix_features

    feature = adapter.feature(torch.as_tensor(stack[None]))
    for k, t, w in ((10, 20.0, 0.5), (3, 5.0, 0.2)):
        mixed = mix_features(feature, KnnMix(index, k=k, temperature=t, weight=w))[0].numpy()
        np.testing.assert_allclose(mixed, reference_mix(store, stack, k, t, w), atol=2e-3)
    plain = model.prompts(stack[None])
    torch.testing.assert_close(model.prompts(stack[None], KnnMix(index, weight=0.0)), plain)
    assert not torch.allclose(model.prompts(stack[None], KnnMix(index, weight=0.5)), plain)
    answer = model.answer(stack, "Describe the audio", knn=KnnMix(index, weight=0.2), temperature=0,
                          max_new_tokens=4)
    assert isinstance(answer, str)


def test_mix_refuses_an_index_of_another_feature_space(setup):
    root, store, model = setup
    with pytest.raises(MullamaError, match="not this adapter's music features"):
        model.prompts(store.get(["clip00001"]), KnnMix(ClipIndex.open(str(root / "store"), "plain")))
    with pytest.raises(MullamaError, match="weight must be between 0 and 1"):
        KnnMix(ClipIndex.open(str(root / "store"), "plain"), weight=1.5)


def test_knn_baseline_takes_the_nearest_training_clips_answer(setup):
    root, store, _ = setup
    index = ClipIndex.open(str(root / "store"), "plain")
    ids = store.clip_ids()
    train_ids, eval_ids = ids[:150], ids[150:]
    train = [QAPair(c, "What is it?", f"answer of {c}") for c in train_ids]
    train += [QAPair(c, "Which tempo?", f"tempo of {c}") for c in train_ids[:20]]
    questions = [QAPair(c, "What is it?", "?") for c in eval_ids] + [QAPair(eval_ids[0], "Which tempo?", "?"),
                                                                     QAPair(eval_ids[0], "Never asked?", "?")]
    results = knn_answers(index, train, questions)
    stacks = store.get(ids).astype(np.float64)
    vectors = unit(unit(stacks / np.linalg.norm(stacks, axis=2, keepdims=True)).mean(axis=1))
    position = {c: i for i, c in enumerate(ids)}
    for result in results[:-2]:
        scores = vectors[:150] @ vectors[position[result.pair.audio_name]]
        assert result.neighbour == train_ids[int(np.argmax(scores))]
        assert result.answer == f"answer of {result.neighbour}"
    scores = vectors[:20] @ vectors[position[eval_ids[0]]]
    assert results[-2].answer == f"tempo of {train_ids[int(np.argmax(scores))]}"
    assert results[-1].answer == "" and results[-1].neighbour == ""
