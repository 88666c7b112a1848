"""On a CUDA machine with the gpu extra: the unsloth trainer trains a night that peft can serve. Skipped elsewhere."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None,
                                reason="needs a CUDA GPU and the gpu extra (unsloth)")


def test_unsloth_night_lowers_the_loss_and_saves_a_peft_adapter(tmp_path, sandbox):
    from peft import PeftModel

    from sleepy.config import LoraConfig, NightConfig, SubspaceConfig
    from sleepy.koans import load_pack
    from sleepy.models.tiny import build_tiny
    from sleepy.night.dataset import build_examples
    from sleepy.night.fit import fit_night
    from sleepy.night.trainer import load_base

    pack = load_pack()
    koans = pack.select("borrow_checker", "train", count=2)
    examples, _ = build_examples([(k, k.title) for k in koans], [], ["reference"], sandbox,
                                 {k.id for k in pack.koans if k.split == "eval"})
    tiny = str(build_tiny(tmp_path / "tiny"))
    result = fit_night(tiny, {"night1": examples}, tmp_path / "adapter", lora=LoraConfig(r=8, alpha=16),
                       night=NightConfig(steps=20, lr=5e-3, trainer="unsloth"), subspace=SubspaceConfig())
    assert result.loss_last < result.loss_first
    model, _ = load_base(tiny)
    PeftModel.from_pretrained(model, tmp_path / "adapter")
