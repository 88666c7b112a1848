"""Subspace nights on the tiny model: coefficient training, Share's merge and UWSH's fixed basis, exported as plain
peft LoRA; routing by the compiler's error code."""

import pytest
import torch

from sleepy.config import LoraConfig, NightConfig, SubspaceConfig
from sleepy.koans import load_pack
from sleepy.lora import read_adapter, write_adapter
from sleepy.night.adapters import find_adapters
from sleepy.night.coefficients import attach, factors, fresh, lora_layers
from sleepy.night.dataset import build_examples
from sleepy.night.fit import fit_night
from sleepy.night.subspace import Subspace
from sleepy.night.trainer import load_base, resolve_trainer, wrap_lora

PACK = load_pack()
EVAL_IDS = {k.id for k in PACK.koans if k.split == "eval"}
LORA = LoraConfig(r=4, alpha=8)
NIGHT = NightConfig(steps=8, lr=5e-3, batch_size=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sleepy.models.tiny import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def examples(sandbox):
    koans = PACK.select(["borrow_checker", "type_mismatch"], "train", count=2)
    out, _ = build_examples([(k, f"Task: {k.title}\nFix:\n{k.code}") for k in koans], [], ["reference"], sandbox,
                            EVAL_IDS)
    assert len(out) == 4
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_attach_trains_only_coefficients_and_starts_at_the_base_model(tiny):
    model, _ = load_base(tiny, "cpu")
    peft = wrap_lora(model, LORA)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with peft.disable_adapter():
        base = logits(peft, ids)
    with torch.no_grad():
        for layer in lora_layers(peft).values():
            layer.lora_B["default"].weight.normal_()
    sub = Subspace.fit([factors(peft)], "share", k=3)
    n = attach(peft, sub, fresh(sub, LORA.r, torch.Generator().manual_seed(0)), phi=2)

    assert n == sub.trainable_params(LORA.r, phi=2) < sub.lora_params(LORA.r)
    trainable = {name.rsplit(".", 1)[-1] for name, p in peft.named_parameters() if p.requires_grad}
    assert trainable == {"coef", "temp", "temp_coef"}
    assert torch.allclose(logits(peft, ids), base, atol=1e-5)  # eps_beta and the B side's temp_beta start at zero
    A, B = factors(peft)["model.layers.0.self_attn.q_proj"]
    assert A.shape == (LORA.r, 64) and B.shape == (64, LORA.r)


def test_a_trained_coefficient_task_exports_to_a_plain_peft_adapter_with_the_same_outputs(tiny, tmp_path):
    from peft import PeftModel

    from sleepy.night.trainer import train

    model, tokenizer = load_base(tiny, "cpu")
    peft = wrap_lora(model, LORA)
    with torch.no_grad():
        for layer in lora_layers(peft).values():
            layer.lora_B["default"].weight.normal_(std=0.02)
    sub = Subspace.fit([factors(peft)], "uwsh", k=4)
    attach(peft, sub, fresh(sub, LORA.r, torch.Generator().manual_seed(1)), phi=0)
    encoded = [{"input_ids": [1, 5, 9, 13, 2, 7], "labels": [-100, -100, 9, 13, 2, 7]}] * 4
    result = train(peft, tokenizer, encoded, steps=6, lr=1e-2, batch_size=2)
    assert result.loss_last < result.loss_first
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    trained = logits(peft, ids)

    sub.add_task(factors(peft), "t")  # coefficients only: projecting on the fixed basis loses nothing
    write_adapter(tmp_path / "a", sub.export("t"), {"lora_alpha": LORA.alpha})
    fresh_base, _ = load_base(tiny, "cpu")
    served = PeftModel.from_pretrained(fresh_base, tmp_path / "a")
    assert torch.allclose(logits(served, ids), trained, atol=1e-4)


def test_share_nights_seed_then_train_coefficients_and_merge(tiny, tmp_path, examples):
    share = SubspaceConfig(method="share", k=6, phi=1)
    first = fit_night(tiny, {"night1": examples[:2]}, tmp_path / "c1", lora=LORA, night=NIGHT, subspace=share, seed=0)
    assert first.trainable_params == first.lora_params > 0  # no basis yet: a plain LoRA seeds it
    second = fit_night(tiny, {"night2": examples}, tmp_path / "c2", lora=LORA, night=NIGHT, subspace=share, seed=1,
                       previous=tmp_path / "c1")
    sub1 = Subspace.load(tmp_path / "c1" / "subspace")
    assert second.trainable_params == sub1.trainable_params(LORA.r, phi=1) < second.lora_params
    assert second.loss_last < second.loss_first
    sub = Subspace.load(tmp_path / "c2" / "subspace")
    assert sub.names == ["night1", "night2"] and second.tasks == ["night1", "night2"]
    assert first.basis_columns == 4  # one rank-4 adapter spans 4 directions per side
    assert second.basis_columns == 5 and 0 < second.kept <= 1  # + the phi=1 temporary direction the merge kept

    assert not (tmp_path / "c2" / "routes").exists()


def trained_factors(monkeypatch):
    """Record the factors each task of a night ends its training with (the real training, watched)."""
    from sleepy.night import trainer

    seen, real = [], trainer.train

    def watched(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        seen.append(factors(model))
        return result

    monkeypatch.setattr(trainer, "train", watched)
    return seen


def same_update(served, config, trained, atol=1e-5):
    """Whether a served adapter (factors, its config) adds the update of `trained` (rank-r factors under LORA)."""
    scale = config["lora_alpha"] / config["r"]
    return all(torch.allclose(served[m][1] @ served[m][0] * scale, trained[m][1] @ trained[m][0] * (LORA.alpha / LORA.r),
                              atol=atol) for m in trained)


def test_the_served_share_adapter_is_the_update_the_night_trained(tiny, tmp_path, examples, monkeypatch):
    """Night 2 of Share trains coefficients and temporary directions, then merges with a small k: the adapter served
    next is what night 2 trained (delta W to 1e-5), not a reconstruction from averaged coefficients."""
    share = SubspaceConfig(method="share", k=3, phi=1)
    seen = trained_factors(monkeypatch)
    fit_night(tiny, {"night1": examples[:2]}, tmp_path / "c1", lora=LORA, night=NIGHT, subspace=share, seed=0)
    fit_night(tiny, {"night2": examples}, tmp_path / "c2", lora=LORA, night=NIGHT, subspace=share, seed=1,
              previous=tmp_path / "c1")
    served, config = read_adapter(tmp_path / "c2")
    assert (config["r"], config["lora_alpha"]) == (LORA.r, LORA.alpha)
    assert same_update(served, config, seen[-1])
    sub = Subspace.load(tmp_path / "c2" / "subspace")
    held = sub.export("night2")  # the subspace keeps night 2 projected on k=3 columns: Share's own loss
    assert not same_update(held, config, seen[-1], atol=1e-3)


def test_route_family_trains_one_task_per_family_and_exports_each(tiny, tmp_path, examples, monkeypatch):
    seen = trained_factors(monkeypatch)
    family = {k.id: k.family for k in PACK.koans}
    groups = {}
    for x in examples:
        groups.setdefault(family[x.koan_id], []).append(x)
    share = SubspaceConfig(method="share", k=6, route="family")
    result = fit_night(tiny, groups, tmp_path / "c1", lora=LORA, night=NIGHT, subspace=share)
    assert result.tasks == ["borrow_checker", "type_mismatch"]
    sub = Subspace.load(tmp_path / "c1" / "subspace")
    for name, trained in zip(sub.names, seen, strict=True):  # each family's route serves what its task trained
        assert same_update(*read_adapter(tmp_path / "c1" / "routes" / name), trained)
    default, config = read_adapter(tmp_path / "c1")  # koans of no known family: the exact mean update
    assert config["r"] == 2 * LORA.r
    mean = {m: (torch.cat([t[m][0] for t in seen]), torch.cat([t[m][1] for t in seen], dim=1) / 2) for m in seen[0]}
    assert same_update(default, config, mean)
    # the second family trained coefficients on the basis the first seeded
    assert result.trainable_params == Subspace.fit([sub.export(0)], "share", k=6).trainable_params(LORA.r, 0)


def test_uwsh_extracts_a_fixed_basis_from_the_source_adapters(tiny, tmp_path, examples):
    model, _ = load_base(tiny, "cpu")
    shapes = {name: m for name, m in lora_layers(wrap_lora(model, LORA)).items()}
    gen = torch.Generator().manual_seed(3)
    for i in range(3):
        adapter = {name: (torch.randn(2, m.lora_A["default"].weight.shape[1], generator=gen),
                          torch.randn(m.lora_B["default"].weight.shape[0], 2, generator=gen))
                   for name, m in shapes.items()}
        write_adapter(tmp_path / "source" / f"run{i}" / "cycle1", adapter, {"lora_alpha": 4})
    (tmp_path / "source" / "run9" / "cycle1.partial").mkdir(parents=True)  # an unfinished night is not a source
    sources = find_adapters(tmp_path / "source", exclude=tmp_path / "source" / "run2")
    assert [p.parent.name for p in sources] == ["run0", "run1"]

    uwsh = SubspaceConfig(method="uwsh", k=3, source=str(tmp_path / "source"))
    result = fit_night(tiny, {"night1": examples}, tmp_path / "c1", lora=LORA, night=NIGHT, subspace=uwsh,
                       sources=lambda: sources)
    assert result.sources == sources and result.basis_columns == 3
    basis = Subspace.fit([read_adapter(p)[0] for p in sources], "uwsh", k=3).bases
    saved = Subspace.load(tmp_path / "c1" / "subspace")
    assert all(torch.equal(saved.bases[m][0], basis[m][0]) for m in basis)  # the fixed basis, as extracted
    assert result.trainable_params == saved.trainable_params(LORA.r, 0) == 2 * 3 * LORA.r * len(basis)

    again = fit_night(tiny, {"night2": examples}, tmp_path / "c2", lora=LORA, night=NIGHT, subspace=uwsh, seed=1,
                      previous=tmp_path / "c1", sources=lambda: pytest.fail("uwsh read its sources again"))
    later = Subspace.load(tmp_path / "c2" / "subspace")
    assert again.tasks == ["night1", "night2"] and again.sources == []  # the basis is not extracted again
    assert all(torch.equal(later.bases[m][1], saved.bases[m][1]) for m in basis)


def test_uwsh_refuses_sources_of_another_model(tiny, tmp_path, examples):
    write_adapter(tmp_path / "other" / "a", {"model.layers.0.self_attn.q_proj": (torch.ones(2, 7), torch.ones(7, 2))},
                  {"lora_alpha": 4})
    uwsh = SubspaceConfig(method="uwsh", k=3, source=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="subspace.source=.*none of its 1 peft adapters fits"):
        fit_night(tiny, {"n": examples}, tmp_path / "c1", lora=LORA, night=NIGHT, subspace=uwsh,
                  sources=lambda: find_adapters(tmp_path / "other"))


def test_unsloth_is_refused_without_a_gpu_and_auto_falls_back_to_peft():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_trainer("auto") == resolve_trainer("peft") == "peft"
    with pytest.raises(ValueError, match="night.trainer=unsloth needs a CUDA GPU"):
        resolve_trainer("unsloth")


def test_the_family_comes_from_the_compilers_error_code(sandbox):
    from sleepy.routing import FamilyRouter, family_by_code

    codes = family_by_code(k for k in PACK.koans if k.split == "train")
    assert codes["E0382"] == "borrow_checker" and codes["E0308"] == "type_mismatch"
    router = FamilyRouter(codes, {"borrow_checker": "c1-borrow_checker"}, "c1")
    routed = {}
    for koan in PACK.select(["borrow_checker", "type_mismatch"], "eval", count=2):
        verdict = sandbox.judge(koan.code, koan.tests)
        routed[koan.family, router.family(verdict)] = router(verdict)
    assert routed[("borrow_checker", "borrow_checker")] == "c1-borrow_checker"
    assert routed[("type_mismatch", "type_mismatch")] == "c1"  # no adapter for that family: the averaged one


def test_a_basis_that_spans_a_side_leaves_no_room_and_needs_no_temporary_direction(tiny):
    """k_proj's output side on tiny is 32-dimensional: a 32-column basis fills it, phi applies to the other sides."""
    model, _ = load_base(tiny, "cpu")
    peft = wrap_lora(model, LoraConfig(r=32, alpha=64))
    with torch.no_grad():
        for layer in lora_layers(peft).values():
            layer.lora_B["default"].weight.normal_()
    sub = Subspace.fit([factors(peft)], "share", k=32)
    assert sub.bases["model.layers.0.self_attn.k_proj"][0].shape == (32, 32)
    n = attach(peft, sub, fresh(sub, 32, torch.Generator().manual_seed(0)), phi=1)
    assert n == sub.trainable_params(32, phi=1)
    sides = [basis for pair in sub.bases.values() for basis in pair]
    room = [b for b in sides if b.shape[0] > b.shape[1]]
    assert 0 < len(room) < len(sides)  # k_proj and v_proj's output sides are full
    assert sub.trainable_params(32, phi=1) - sub.trainable_params(32, phi=0) == sum(b.shape[0] + 32 for b in room)


def test_a_night_on_missing_base_weights_says_where_it_looked(tmp_path):
    from sleepy.models.base import ModelLoadError

    with pytest.raises(ModelLoadError, match=f"local directory {tmp_path / 'nope'}: it does not exist"):
        load_base(str(tmp_path / "nope"), "cpu")
