"""Prompt methods: the prompt module against independent computations, the cached query, batch
independence, what trains, CODA's components, and runs through the runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cilbench.data.augment import Augmentation, training_data
from cilbench.data.sources import DatasetView, FileSource
from cilbench.engine.evaluation import evaluate
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.learn.prompt_components import (
    ComponentPool,
    orthonormal_rows,
    sequential_orthonormal_rows,
)
from cilbench.learn.prompts import (
    KeyedPrompter,
    LayerPrompts,
    PromptPool,
    _prefixed_attention,
    prompted_features,
    pull_constraint,
    select_top_k,
)
from cilbench.learn.training import TrainSettings, WithPositions, make_scheduler
from cilbench.testing import make_strategy, synthetic_stream, tiny_backbone, tiny_dinov2_vit

PROMPT_STRATEGIES = ["l2p", "dualprompt", "coda-prompt"]


def prepared_images(view: DatasetView, backbone) -> torch.Tensor:
    transform = backbone.preprocessing.sample_transform()
    images = [transform(view.source.load(int(i))) for i in view.indices]
    return backbone.prepare(torch.stack(images))


def test_prefix_attention_equals_attending_to_extra_tokens():
    """Prefix keys/values of extra tokens = letting the image tokens attend to those tokens."""
    attention = tiny_dinov2_vit().blocks[0].attn
    x, extra = torch.randn(3, 5, 32), torch.randn(3, 4, 32)
    _, k, v = attention.qkv(extra).chunk(3, dim=-1)
    expected = attention(torch.cat([x, extra], dim=1))[:, :5]
    assert torch.allclose(_prefixed_attention(attention, x, k, v), expected, atol=1e-5)


@pytest.mark.parametrize("size", [28, 42])
def test_prompted_forward_of_any_vit(size: int):
    """No prompts: timm's own output. Inserted tokens: the hand-built sequence (no position)."""
    model = tiny_dinov2_vit()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(prompted_features(model, images, LayerPrompts()), model(images))
        tokens = torch.randn(2, 3, 32)
        x = model._pos_embed(model.patch_embed(images))
        x = model.norm(model.blocks(torch.cat([x[:, :1], tokens, x[:, 1:]], dim=1)))
        prompted = LayerPrompts(tokens={0: tokens})
        assert torch.allclose(prompted_features(model, images, prompted), x[:, 0], atol=1e-5)
        mean = prompted_features(model, images, prompted, readout="prompts")
        assert torch.allclose(mean, x[:, 1:4].mean(dim=1), atol=1e-5)


def test_top_k_per_sample_and_batch_vote_by_hand():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.1, 0.9, 0.3]])
    assert select_top_k(similarity, 1).flatten().tolist() == [0, 1, 1]
    assert select_top_k(similarity, 1, batchwise=True).flatten().tolist() == [1, 1, 1]
    tie = similarity[:2]  # ids 0 and 1 once each: the lower id wins the vote
    assert select_top_k(tie, 1, batchwise=True).flatten().tolist() == [0, 0]
    ids = select_top_k(similarity, 2)
    assert ids.tolist() == [[0, 2], [1, 2], [1, 2]]
    assert pull_constraint(similarity, ids).item() == pytest.approx((1.4 + 1.5 + 1.2) / 3)


def test_batch_vote_ties_as_lamda_pilot_by_hand():
    """Four samples pick {0,1}, {1,2}, {2,3}, {0,3}: ids 0-3 twice each, 4-5 never. LAMDA-PILOT
    ranks the counts of the unique ids padded to the pool size with the least id and count 0
    ([0, 1, 2, 3, 0, 0] / [2, 2, 2, 2, 0, 0]) with `torch.topk`; cilbench's default: lower ids."""
    picks = [(0, 1), (1, 2), (2, 3), (0, 3)]
    similarity = torch.zeros(4, 6)
    for row, (a, b) in enumerate(picks):
        similarity[row, a], similarity[row, b] = 0.9, 0.8
    lower = select_top_k(similarity, 2, batchwise=True)
    assert lower.tolist() == [[0, 1]] * 4
    layout = torch.tensor([0, 1, 2, 3, 0, 0])
    expected = layout[torch.tensor([2, 2, 2, 2, 0, 0]).topk(2).indices]
    pilot = select_top_k(similarity, 2, batchwise=True, ties="topk")
    assert pilot.tolist() == [expected.tolist()] * 4
    assert set(expected.tolist()) <= {0, 1, 2, 3}  # never an unchosen (count 0) id
    clear = torch.tensor([[0.9, 0.8, 0, 0, 0, 0], [0.9, 0.1, 0.8, 0, 0, 0]])  # id 0 twice: no tie
    assert select_top_k(clear, 1, batchwise=True, ties="topk").tolist() == [[0], [0]]


def test_symmetric_initialisation_range():
    """[0, s) by default (flax), [-s, s) with `symmetric` (LAMDA-PILOT's uniform_(-1, 1))."""
    pool = PromptPool(64, size=10, length=5, layers=(0,), prefix=False)
    pool.reset_parameters(torch.Generator().manual_seed(0), 0.01)
    assert pool.prompts.min() >= 0 and pool.prompts.max() < 0.01 and pool.keys.min() >= 0
    pool.reset_parameters(torch.Generator().manual_seed(0), 1.0, symmetric=True)
    for values in (pool.prompts, pool.keys):
        assert -1 <= values.min() < -0.95 and 0.95 < values.max() < 1
        assert abs(values.mean().item()) < 0.05


def test_l2p_pilot_settings_reach_the_prompter():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy(
        "l2p", backbone, stream, init_symmetric=True, init_scale=1.0, vote_ties="topk"
    )
    assert strategy.prompter.ties == "topk"
    assert strategy.prompter.pool.keys.min() < -0.5


def test_torch_linear_head_init_by_hand():
    """`nn.Linear`'s own initialisation: weights and bias U(-1/sqrt(dim), 1/sqrt(dim))."""
    from cilbench.learn.heads import TaskHeads

    heads = TaskHeads(16)
    head = heads.grow(400, torch.Generator().manual_seed(0), init="torch-linear")
    bound = 16**-0.5
    for values in (head.weight, head.bias):
        assert -bound <= values.min() < -0.9 * bound and 0.9 * bound < values.max() < bound
    default = heads.grow(400, torch.Generator().manual_seed(0))
    assert torch.equal(default.bias, torch.zeros(400))
    assert abs(default.weight.std().item() - 0.02) < 0.002


def test_sequential_gram_schmidt_by_hand():
    """LAMDA-PILOT's variant subtracts the projection on each earlier row separately: against
    e1 and e1 + e2 (not orthogonal) the new row r = v - v1 e1 - (v1 + v2)/2 (e1 + e2), normalised;
    against orthonormal rows it agrees with the span variant's orthogonality."""
    old = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    v = torch.randn(4, generator=torch.Generator().manual_seed(3))
    r = v - v[0] * old[0] - (v[0] + v[1]) / 2 * old[1]
    row = sequential_orthonormal_rows(old, 1, torch.Generator().manual_seed(3))
    assert torch.allclose(row[0], r / r.norm(), atol=1e-6)
    assert row[0, 0].abs() > 1e-3  # not orthogonal to the old span (the span variant's is)
    assert orthonormal_rows(old, 1, torch.Generator().manual_seed(3))[0, :2].abs().max() < 1e-6
    rows = sequential_orthonormal_rows(torch.eye(5)[:2], 3, torch.Generator().manual_seed(0))
    assert torch.allclose(rows @ rows.T, torch.eye(3), atol=1e-5)
    assert rows[:, :2].abs().max() < 1e-6


def test_coda_pilot_settings_reach_the_pool_and_head():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy(
        "coda-prompt", backbone, stream, gram_schmidt="sequential", head_init="torch-linear"
    )
    assert strategy.prompter.orthonormal is sequential_orthonormal_rows
    strategy.train_experience(stream.experiences[0])
    assert strategy.heads.heads[0].bias.abs().max() > 0  # PyTorch's default bias is not zero


def test_dualprompt_task_prompts_shared_start_and_general_prefix():
    """Training uses experience t's own prompt and key; a new slot starts as the previous one."""
    pool = PromptPool(4, size=3, length=2, layers=(1,), prefix=True)
    general = PromptPool(4, size=1, length=1, layers=(0, 1), prefix=True, keyed=False)
    generator = torch.Generator().manual_seed(0)
    pool.reset_parameters(generator, 1.0)
    general.reset_parameters(generator, 1.0)
    prompter = KeyedPrompter(pool, 1, general=general, task_masked=True, share_previous=True)
    prompter.start_task(1, generator)
    assert torch.equal(pool.prompts[:, :, 1], pool.prompts[:, :, 0])
    query = torch.randn(5, 4)
    prompts, pull = prompter(query, task=1, training=True)
    cosine = torch.nn.functional.cosine_similarity(query, pool.keys[1:2].expand(5, -1))
    assert pull.item() == pytest.approx(cosine.mean().item(), abs=1e-6)
    keys, values = prompts.prefixes[1]  # G-prompt's token, then E-prompt 1's two
    assert keys.shape == (5, 3, 4)
    assert torch.equal(keys[:, 0], general.prompts[1, 0, 0, 0].expand(5, -1))
    assert torch.equal(values[:, 1:], pool.prompts[0, 1, 1].expand(5, -1, -1))
    assert set(prompts.prefixes) == {0, 1} and not prompts.tokens


def test_gram_schmidt_rows_by_hand():
    old = torch.tensor([[2.0, 0.0, 0.0]])
    rows = orthonormal_rows(old, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(rows[:, 0], torch.zeros(2), atol=1e-6)
    assert torch.allclose(rows @ rows.T, torch.eye(2), atol=1e-6)


def test_coda_schedule_and_position_labels():
    settings = TrainSettings(epochs=5, lr=1.0, schedule="coda-cosine", optimizer="adam")
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, settings)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # The references' CosineSchedule takes step 0 in its constructor and resets its epoch count,
    # so the first step() repeats step 0: epochs 0 and 1 both train at the full lr.
    assert rates == pytest.approx([1.0] + [math.cos(99 * math.pi * e / 800) for e in range(4)])
    data = WithPositions([(torch.zeros(1), 7), (torch.ones(1), 9)])
    images, pairs = data[[1, 0]]
    assert pairs.tolist() == [[9, 1], [7, 0]] and images.flatten().tolist() == [1.0, 0.0]


def test_position_labels_follow_per_image_augmentation_keys(tmp_path):
    """Image files are augmented per image under (position, seed) keys: positions stay positions
    (query_from_cache on a file-based stream)."""
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    files = FileSource(tmp_path, [f"{i}.png" for i in range(3)], [0, 1, 2], "files")
    view = DatasetView(files, np.arange(3), np.array([4, 5, 6]))
    data = WithPositions(training_data(tiny_backbone(), [view], Augmentation())[0])
    keys = list(data.sampler(torch.Generator().manual_seed(0)))
    images, pairs = data[keys]
    positions = [position for position, _ in keys]
    assert pairs[:, 1].tolist() == positions
    assert pairs[:, 0].tolist() == [4 + p for p in positions] and images.shape == (3, 3, 32, 32)


def test_cached_query_equals_live_query(tmp_path):
    """The feature cache (written and read back) holds the query the prompt module computes."""
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("l2p", backbone, stream)
    view = stream.test_sets[0]
    FeatureStore(backbone, tmp_path).get(view)
    reread = FeatureStore(backbone, tmp_path)
    cached, _ = reread.get(view)
    assert reread.cache_hits == 1
    live = strategy.query(prepared_images(view, backbone))
    assert (cached - live).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def trained_l2p():
    """L2P with top-1 selection from a pool of 10 after the first experience."""
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("l2p", backbone, stream, top_k=1, prompt_length=2, init_scale=1.0)
    strategy.train_experience(stream.experiences[0])
    return stream, backbone, strategy


def test_predictions_with_and_without_the_cache_are_identical(trained_l2p):
    stream, backbone, strategy = trained_l2p
    view = stream.test_sets[0]
    images = prepared_images(view, backbone)
    cached, _ = strategy.features.get(view)
    with torch.no_grad():
        assert torch.allclose(
            strategy.predict_with_features(images, cached), strategy.predict(images), atol=1e-5
        )
    store = strategy.features
    assert evaluate(strategy, stream, 0, store, 5) == evaluate(
        strategy, stream, 0, store, 5, cached_features=False
    )


def _predictions(strategy, images, order: np.ndarray, batch: int) -> torch.Tensor:
    """Per-image predicted class when the images come in `order`, `batch` at a time."""
    query = strategy.query(images)
    predicted = torch.empty(len(images), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(order), batch):
            chosen = torch.as_tensor(order[start : start + batch])
            scores = strategy.predict_with_features(images[chosen], query[chosen])
            predicted[chosen] = scores.argmax(dim=1)
    return predicted


def test_predictions_do_not_depend_on_the_batch_unless_the_batch_vote_is_on(trained_l2p):
    stream, backbone, strategy = trained_l2p
    images = prepared_images(stream.test_sets[0], backbone)
    rng = np.random.default_rng(0)
    natural = np.arange(len(images))
    reference = _predictions(strategy, images, natural, 16)
    for batch in (3, 7):
        shuffled = _predictions(strategy, images, rng.permutation(len(images)), batch)
        assert torch.equal(shuffled, reference)

    voting = make_strategy(
        "l2p", backbone, stream, top_k=1, prompt_length=2, init_scale=1.0, batchwise_prompt=True
    )
    voting.load_state_dict(strategy.state_dict())
    alone = _predictions(voting, images, natural, 1)
    assert torch.equal(alone, reference)  # a batch of one votes for its own prompt
    together = _predictions(voting, images, natural, len(images))
    assert not torch.equal(together, alone)


@pytest.mark.parametrize("name", PROMPT_STRATEGIES)
def test_only_prompts_keys_attention_and_head_train(name: str):
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy(name, backbone, stream)
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    strategy.train_experience(stream.experiences[0])
    after = strategy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    prompter = {
        "l2p": {"prompter.pool.prompts", "prompter.pool.keys"},
        "dualprompt": {"prompter.pool.prompts", "prompter.pool.keys", "prompter.general.prompts"},
        "coda-prompt": {"prompter.components", "prompter.keys", "prompter.attention"},
    }[name]
    assert changed == prompter | {"num_seen", "heads.sizes"}
    assert "heads.heads.0.weight" in after
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.model.state_dict().items())
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_coda_new_components_orthogonal_and_old_ones_frozen():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("coda-prompt", backbone, stream)
    pool = strategy.prompter
    assert isinstance(pool, ComponentPool)
    strategy.train_experience(stream.experiences[0])
    old = {k: v.clone() for k, v in pool.state_dict().items()}
    first, second = pool.owned(0), pool.owned(1)
    pool.start_task(1, torch.Generator().manual_seed(1))
    for name, values in pool.state_dict().items():
        for layer in values:
            rows = layer.flatten(1)
            new = rows[second]
            assert torch.allclose(new @ rows[first].T, torch.zeros(4, 4), atol=1e-5), name
            assert torch.allclose(new @ new.T, torch.eye(4), atol=1e-5), name
    strategy.train_experience(stream.experiences[1])
    for name, values in pool.state_dict().items():
        assert torch.equal(values[:, first], old[name][:, first]), f"{name} changed"
        assert not torch.equal(values[:, second], old[name][:, second]), f"{name} did not train"


@pytest.mark.parametrize("name", PROMPT_STRATEGIES)
def test_run_finishes_and_records_the_query_flags(name: str, tmp_path):
    overrides = {"stream.train_per_class": 8, "stream.test_per_class": 4}
    if name == "l2p":
        overrides.update({"query_from_cache": True, "batchwise_prompt": True})
    result = run(RunSpec(strategy=name, stream="synthetic", out_dir=tmp_path, overrides=overrides))
    assert result.complete and len(result.accuracy_matrix) == 3
    assert result.strategy_report["query_from_cache"] is (name == "l2p")
    assert result.strategy_report["batchwise_prompt"] is (name == "l2p")
    assert result.cost["trainable_parameters"] > 0


def test_coda_recipe_sets_the_natural_class_order(tmp_path, monkeypatch):
    """A recipe's `stream.*` keys reach the stream, and the resolved config records them."""
    from cilbench.engine.loop import prepare
    from cilbench.engine.recipes import recipes_of
    from cilbench.strategies.coda_prompt import CodaPrompt

    for stream in ("split-cifar100", "split-imagenet-r"):
        recipes = recipes_of(CodaPrompt, stream)
        assert [r.name for r in recipes] == ["default", "pilot"]
        assert all(r.settings["stream.class_order"] == "natural" for r in recipes)
    demo = {**CodaPrompt.recipes["synthetic"], "stream.class_order": "natural"}
    monkeypatch.setattr(CodaPrompt, "recipes", {"synthetic": demo})
    prepared = prepare(RunSpec(strategy="coda-prompt", stream="synthetic", out_dir=tmp_path))
    assert prepared.config["stream_options"]["class_order"] == "natural"
    assert prepared.stream.info.class_order == tuple(range(6))
    assert prepared.config["strategy_config"]["components"] == 12


def test_query_from_cache_trains_the_keys(trained_l2p):
    stream, backbone, _ = trained_l2p
    strategy = make_strategy("l2p", backbone, stream, query_from_cache=True)
    before = strategy.prompter.pool.keys.detach().clone()
    strategy.train_experience(stream.experiences[0])
    assert not torch.equal(strategy.prompter.pool.keys, before)


def test_masked_head_profile_trains_only_the_new_head():
    """The prompt methods' head protocol: old heads get no gradient through masked logits."""
    from cilbench.features import FeatureStore
    from cilbench.learn.heads import TaskHeads
    from cilbench.learn.training import TrainSettings
    from cilbench.profiles.masked_head import masked_head_accuracy, train_masked

    backbone, stream = tiny_backbone(), synthetic_stream()
    store = FeatureStore(backbone, cache_dir=None)
    settings = TrainSettings(epochs=2, lr=0.05, optimizer="adam", schedule="constant")
    generator = torch.Generator().manual_seed(0)
    heads = TaskHeads(backbone.feature_dim)
    first, second = stream.experiences[:2]
    heads.grow(len(first.new_classes), generator)
    train_masked(heads, first, store, settings, generator)
    old = [p.detach().clone() for p in heads.heads[0].parameters()]
    new_init = [
        p.detach().clone() for p in heads.grow(len(second.new_classes), generator).parameters()
    ]
    train_masked(heads, second, store, settings, generator)
    assert all(torch.equal(a, b) for a, b in zip(old, heads.heads[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(new_init, heads.heads[1].parameters()))
    assert 0.0 <= masked_head_accuracy(stream, store, settings, seed=0) <= 100.0
