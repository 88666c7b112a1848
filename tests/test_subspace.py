"""LoRA subspaces (Share, UWSH) and peft adapter directories, on small random matrices and a tiny real model."""

import pytest
import torch

from sleepy.lora import read_adapter, write_adapter
from sleepy.night.adapters import merge_updates
from sleepy.night.subspace import Subspace, build_basis, param_counts

# module -> (d_in, d_out); two module types of different shapes
SHAPES = {"model.layers.0.self_attn.q_proj": (12, 16), "model.layers.0.self_attn.v_proj": (12, 8)}
TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100
)


def random_adapter(gen, r=2, shapes=SHAPES):
    return {
        name: (torch.randn(r, d_in, generator=gen), torch.randn(d_out, r, generator=gen))
        for name, (d_in, d_out) in shapes.items()
    }


def adapters(n, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    return [random_adapter(gen, **kw) for _ in range(n)]


def assert_factors_close(got, want, atol):
    assert set(got) == set(want)
    for name in want:
        for g, w in zip(got[name], want[name], strict=True):
            assert g.shape == w.shape
            assert torch.allclose(g, w, atol=atol), (name, (g - w).abs().max())


def centred_kept(basis, M):
    """Fraction of the centred variance of M's columns that the orthonormal `basis` keeps."""
    C = M - M.mean(dim=1, keepdim=True)
    return float((basis.T @ C).square().sum() / C.square().sum())


def test_bases_orthonormal_and_exact_when_k_covers_the_span():
    tasks = adapters(3)  # 3 tasks of rank 2: span 6 per side, +1 asked for the mean
    sub = Subspace.fit(tasks, "share", k=7)
    for basis_B, basis_A in sub.bases.values():
        for basis in (basis_B, basis_A):
            assert basis.shape[1] == 6  # never more than the rank
            assert torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5)
    for i, task in enumerate(tasks):
        assert_factors_close(sub.export(i), task, atol=1e-4)
    for kept_B, kept_A in sub.kept.values():
        assert kept_B == pytest.approx(1.0) and kept_A == pytest.approx(1.0)


def test_explained_variance_keeps_the_smallest_k():
    gen = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(40, 12, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(30, 12, generator=gen))
    M = U @ torch.diag(2.0 ** -torch.arange(12.0) * 10) @ V.T + torch.randn(40, 1, generator=gen)
    for asked in (0.5, 0.9, 0.99):
        basis, kept = build_basis(M, explained_variance=asked)
        assert torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5)
        assert kept >= asked
        assert kept == pytest.approx(centred_kept(basis, M), abs=1e-5)
        assert centred_kept(basis[:, :-1], M) < asked  # one column fewer would not do
    full, kept = build_basis(M, explained_variance=1.0)
    assert full.shape[1] == 13 and kept == pytest.approx(1.0)  # the mean and 12 directions: the whole span
    basis, _ = build_basis(M, k=5)
    assert basis.shape[1] == 5
    assert torch.allclose(basis[:, 0], M.mean(dim=1) / M.mean(dim=1).norm(), atol=1e-5)  # the mean comes first
    with pytest.raises(ValueError):
        build_basis(M, k=3, explained_variance=0.9)


def test_zero_mean_is_left_out():
    gen = torch.Generator().manual_seed(2)
    half = torch.randn(10, 3, generator=gen)
    basis, _ = build_basis(torch.cat([half, -half], dim=1), k=10)
    assert basis.shape[1] == 3  # rank 3, no mean direction
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)


def test_share_merge_is_exact_when_k_covers_the_span():
    tasks = adapters(4)
    sub = Subspace("share", k=20)
    for task in tasks:  # the first task seeds the bases
        sub.add_task(task)
    assert len(sub.tasks) == 4
    for i, task in enumerate(tasks):
        assert_factors_close(sub.export(i), task, atol=1e-4)


def test_share_merge_moves_earlier_tasks_at_most_by_the_discarded_part():
    sub = Subspace.fit(adapters(4), "share", k=3)
    before = [sub.export(i) for i in range(4)]
    new = adapters(1, seed=5)[0]
    sub.merge(new)
    assert len(sub.tasks) == 5
    stacked = before + [new]
    for name, (basis_B, basis_A) in sub.bases.items():
        M_B = torch.cat([a[name][1] for a in stacked], dim=1)
        M_A = torch.cat([a[name][0].T for a in stacked], dim=1)
        discarded_B = (M_B - basis_B @ basis_B.T @ M_B).norm()
        discarded_A = (M_A - basis_A @ basis_A.T @ M_A).norm()
        assert discarded_B > 0.1 and discarded_A > 0.1  # k=3 really does discard something
        for i, old in enumerate(before):
            A, B = old[name]
            A2, B2 = sub.export(i)[name]
            change = (B2 @ A2 - B @ A).norm()
            # B'A' - BA = B'(A' - A) + (B' - B)A, and |B'| <= |B|, |A' - A| <= discarded_A, |B' - B| <= discarded_B
            assert change <= B.norm() * discarded_A + discarded_B * A.norm() + 1e-4
        # merging through span(old basis, new factor) gives the same bases as an SVD of the whole stack
        again = Subspace.fit(stacked, "share", k=3).bases[name]
        for got, want in zip((basis_B, basis_A), again, strict=True):
            assert torch.allclose(got @ got.T, want @ want.T, atol=1e-4)


def test_uwsh_basis_is_fixed_and_keeps_the_mean_adapter():
    collection = adapters(5)
    sub = Subspace.fit(collection, "uwsh", k=2)
    assert sub.tasks == []
    bases = {name: tuple(b.clone() for b in pair) for name, pair in sub.bases.items()}
    for task in adapters(2, seed=3):
        sub.add_task(task)
    assert len(sub.tasks) == 2
    for name, pair in sub.bases.items():
        assert all(torch.equal(a, b) for a, b in zip(pair, bases[name], strict=True))
    # the mean adapter: on each side every column is the mean column of the collection's stacked factors
    mean = {}
    for name in SHAPES:
        m_A = torch.cat([a[name][0].T for a in collection], dim=1).mean(dim=1)
        m_B = torch.cat([a[name][1] for a in collection], dim=1).mean(dim=1)
        mean[name] = (m_A.expand(2, -1).clone(), m_B[:, None].expand(-1, 2).clone())
    assert_factors_close(sub.reconstruct(sub.project(mean)), mean, atol=1e-5)
    # while k=2 is far from covering the collection
    assert max((sub.reconstruct(sub.project(collection[0]))[n][1] - collection[0][n][1]).norm() for n in SHAPES) > 0.1
    with pytest.raises(ValueError):
        sub.merge(collection[0])


def test_trainable_params_by_hand():
    sub = Subspace.fit(adapters(3), "share", k=3)  # span 6 >= 3: k=3 on both sides
    # per module 2*k*r = 12 coefficients; phi=1 adds d_in + d_out basis columns and 2*r coefficient rows
    assert sub.trainable_params(r=2) == 24
    assert sub.trainable_params(r=2, phi=1) == 24 + (12 + 16) + (12 + 8) + 2 * 4
    assert sub.lora_params(r=2) == 2 * (12 + 16) + 2 * (12 + 8)


def test_param_counts_by_hand():
    # q: 32 -> 32, v: 32 -> kv_heads * head_dim = 2 * 8 = 16; 2 layers
    counts = param_counts(TINY, ["q_proj", "v_proj"], r=2, k=3, phi=1)
    assert counts["lora"] == 2 * (2 * (32 + 32) + 2 * (32 + 16)) == 448
    assert counts["share"] == 2 * ((12 + 64 + 4) + (12 + 48 + 4)) == 288
    assert counts["ratio"] == pytest.approx(288 / 448)
    assert param_counts(TINY, ["q_proj", "v_proj"], r=2, k=3)["share"] == 2 * 2 * 12
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert param_counts(TINY, every, r=1, k=1)["lora"] == 2 * (64 + 48 + 48 + 64 + 96 + 96 + 96)
    with pytest.raises(ValueError):
        param_counts(TINY, ["lm_head"], r=2, k=3)


def test_save_load_round_trip(tmp_path):
    sub = Subspace.fit(adapters(3), "share", explained_variance=0.8)
    sub.save(tmp_path / "sub")
    sub.merge(adapters(1, seed=9)[0])
    sub.save(tmp_path / "sub")  # replaces the earlier one
    loaded = Subspace.load(tmp_path / "sub")
    assert (loaded.method, loaded.k, loaded.explained_variance) == ("share", None, 0.8)
    assert loaded.kept == sub.kept
    for name, pair in sub.bases.items():
        assert all(torch.equal(a, b) for a, b in zip(pair, loaded.bases[name], strict=True))
    assert len(loaded.tasks) == 4
    for i in range(4):
        assert_factors_close(loaded.export(i), sub.export(i), atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]  # no staging directories left behind


@pytest.fixture
def tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()


def test_exported_adapter_loads_in_peft(tmp_path, tiny_model):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    shapes = {}
    for layer in range(TINY["num_hidden_layers"]):
        shapes[f"model.layers.{layer}.self_attn.q_proj"] = (32, 32)
        shapes[f"model.layers.{layer}.self_attn.v_proj"] = (32, 16)
    sub = Subspace.fit(adapters(3, r=4, shapes=shapes), "share", k=6)
    exported = sub.export(0)
    write_adapter(tmp_path / "adapter", exported, {"lora_alpha": 8, "base_model_name_or_path": "tiny"})

    factors, config = read_adapter(tmp_path / "adapter")
    assert_factors_close(factors, exported, atol=0)
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 8, "LORA")
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]

    base_q = tiny_model.model.layers[1].self_attn.q_proj.weight.detach().clone()
    model = PeftModel.from_pretrained(tiny_model, tmp_path / "adapter")
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    assert len(state) == 2 * len(exported)
    for name, (A, B) in exported.items():
        assert torch.equal(state[f"base_model.model.{name}.lora_A.weight"], A)
        assert torch.equal(state[f"base_model.model.{name}.lora_B.weight"], B)
    merged = model.merge_and_unload().model.layers[1].self_attn.q_proj.weight
    A, B = exported["model.layers.1.self_attn.q_proj"]
    assert torch.allclose(merged, base_q + (8 / 4) * B @ A, atol=1e-5)


def test_read_adapter_saved_by_peft(tmp_path, tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj", "down_proj"]))
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_()  # peft starts B at zero
    model.save_pretrained(tmp_path / "peft")
    factors, config = read_adapter(tmp_path / "peft")
    assert len(factors) == 4 and config["r"] == 2
    layer = model.base_model.model.model.layers[0]
    A, B = factors["model.layers.0.mlp.down_proj"]
    assert torch.equal(A, layer.mlp.down_proj.lora_A["default"].weight)
    assert torch.equal(B, layer.mlp.down_proj.lora_B["default"].weight)

    write_adapter(tmp_path / "copy", factors, config)  # peft's own config passes through
    again, again_config = read_adapter(tmp_path / "copy")
    assert_factors_close(again, factors, atol=0)
    assert again_config["lora_alpha"] == 4 and sorted(again_config["target_modules"]) == ["down_proj", "k_proj"]
    with pytest.raises(ValueError):
        write_adapter(tmp_path / "bad", factors, {**config, "r": 3})


def update(factors, alpha):
    return {name: (alpha / A.shape[0]) * B @ A for name, (A, B) in factors.items()}


def test_merged_updates_are_exactly_the_mean_update_where_averaged_factors_are_not():
    """LoRA factors are defined only up to an r x r transform: the same update with its factors' signs flipped
    averages (as factors or as subspace coefficients) to zero. merge_updates keeps the mean update itself."""
    (task,) = adapters(1, r=3)
    flipped = {name: (-A, -B) for name, (A, B) in task.items()}
    other = adapters(1, seed=5, r=3)[0]
    merged, config = merge_updates([(task, {"lora_alpha": 6}), (flipped, {"lora_alpha": 6}), (other, {"lora_alpha": 3})])
    assert config["r"] == 9 and config["lora_alpha"] == 9
    want = {name: (2 * update(task, 6)[name] + update(other, 3)[name]) / 3 for name in task}
    got = update(merged, config["lora_alpha"])
    assert all(torch.allclose(got[name], want[name], atol=1e-5) for name in want)
    sub = Subspace.fit([task, flipped], "share", k=8)
    mean = {name: tuple((sub.tasks[0][name][side] + sub.tasks[1][name][side]) / 2 for side in (0, 1)) for name in task}
    assert all(update(sub.reconstruct(mean), 6)[name].abs().max() < 1e-5 for name in task)  # what used to be served
