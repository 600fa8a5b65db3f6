"""LoRA through peft: adapter-off reference (no copy), small checkpoints, bit-exact resume,
export to transformers / peft folders, a starting adapter as the reference, critic adapters."""

from __future__ import annotations

import pytest
import torch
from helpers import make_prompts, text_config

from agents.core.kl import apply_kl_penalty
from agents.run import checkpoint as ckpt
from agents.run.config import load_config, save_config
from agents.run.export import export_run
from agents.run.rundir import new_run_dir
from agents.run.trainer import Trainer

LORA = {"r": 4, "alpha": 8}


def lora_config(model_path: str, root: str, **policy) -> dict:
    cfg = text_config(model_path, root)
    cfg["total_timesteps"] = 8 * 8 * 2
    cfg["policy"].update({"lora": dict(LORA), **policy})
    cfg["eval"]["episodes"] = 0
    return cfg


def trainable(policy) -> set[str]:
    return {n for n, p in policy.named_parameters() if p.requires_grad}


def test_reference_is_the_base_with_adapters_off_and_kl_starts_at_zero(gpt2_ctx64_path, tmp_path):
    trainer = Trainer(load_config(lora_config(gpt2_ctx64_path, str(tmp_path))))
    policy = trainer.policy
    names = trainable(policy)
    assert names and all(".lora_" in n or n.startswith("value_head.") for n in names)
    assert "value_head.weight" in names
    assert trainer.reference.state_dict() == {}  # no copy of any weight
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    trainer.collector.collect()
    stats = apply_kl_penalty(trainer.buffer, policy, trainer.reference, 0.1, "k1")
    assert abs(stats["kl_to_ref"]) < 1e-5 and abs(stats["kl_per_step"]) < 1e-6
    metrics = trainer.iterate()
    assert abs(metrics["kl/kl_to_ref"]) < 1e-5  # the first rollout: policy == reference
    # the update moved the adapters, not the base; now the policy differs from the reference
    assert all(torch.equal(p, base[n]) for n, p in policy.named_parameters() if n in base)
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at 0 (peft): it has moved
    trainer.collector.collect()
    stats = apply_kl_penalty(trainer.buffer, policy, trainer.reference, 0.1, "k1")
    assert stats["kl_per_step"] != 0.0
    trainer.close()


def test_checkpoint_holds_adapters_and_resumes_bit_exact(gpt2_ctx64_path, tmp_path):
    cfg = load_config(lora_config(gpt2_ctx64_path, str(tmp_path)))
    full = Trainer(cfg, new_run_dir(cfg, "full"))
    full.iterate()
    full.iterate()

    half = Trainer(cfg, new_run_dir(cfg, "half"))
    half.iterate()
    path = half.save()
    _, tensors = ckpt.read_checkpoint(path)
    saved = {k[len("policy/") :] for k in tensors if k.startswith("policy/")}
    assert saved == trainable(half.policy)  # adapters + value head, no frozen base
    assert not any(k.startswith("reference/") for k in tensors)
    torch.manual_seed(123)  # garbage RNG state between the two halves
    resumed = Trainer(cfg, half.run_dir, resume=True)
    assert resumed.global_step == 64
    resumed.iterate()
    a = full.policy.checkpoint_state_dict()
    b = resumed.policy.checkpoint_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = full.ppo.optimizer.state_dict()["state"], resumed.ppo.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])


def actor_logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_export_merged_and_adapter_folders_load_and_match(gpt2_ctx64_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(lora_config(gpt2_ctx64_path, str(tmp_path)))
    trainer = Trainer(cfg, new_run_dir(cfg, "run"))
    save_config(cfg, trainer.run_dir / "config.yaml")
    trainer.iterate()
    trainer.save()
    ids, mask = make_prompts([5, 9], 10, 0, seed=2)
    expected = actor_logits(trainer.policy.model, ids, mask)
    merged = export_run(trainer.run_dir, tmp_path / "merged", merge=True)
    adapter = export_run(trainer.run_dir, tmp_path / "adapter", merge=False)
    assert (merged["kind"], adapter["kind"]) == ("merged", "adapter")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(actor_logits(plain, ids, mask), expected, atol=1e-4, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(gpt2_ctx64_path)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(actor_logits(peft_model, ids, mask), expected, atol=1e-5, rtol=0)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 0.2 * (
        tmp_path / "merged" / "model.safetensors"
    ).stat().st_size

    # a run that starts from the trained adapter: the reference is that adapter, not the base
    cfg2 = lora_config(gpt2_ctx64_path, str(tmp_path))
    cfg2["policy"]["lora"]["adapter_path"] = str(tmp_path / "adapter")
    second = Trainer(load_config(cfg2))
    torch.testing.assert_close(
        actor_logits(second.policy.model, ids, mask), expected, atol=1e-5, rtol=0
    )
    assert not any("reference" in n for n in trainable(second.policy))
    second.collector.collect()
    stats = apply_kl_penalty(second.buffer, second.policy, second.reference, 0.1, "k1")
    # the KL pass re-scores the rollout's tokens in one teacher-forced forward: equal to the
    # rollout's log-probs up to float32 rounding, which differs between CPUs and BLAS builds
    # (1.2e-7 seen); KL to the bare base instead of the adapter would be orders larger
    assert abs(stats["kl_to_ref"]) < 1e-5
    with second.policy.model.disable_adapter():  # the bare base is a different policy here
        assert not torch.allclose(actor_logits(second.policy.model, ids, mask), expected)
    second.close()


def test_separate_critic_gets_its_own_adapters_on_the_same_base(gpt2_ctx64_path, tmp_path):
    cfg = lora_config(gpt2_ctx64_path, str(tmp_path), critic="separate")
    trainer = Trainer(load_config(cfg))
    policy = trainer.policy
    names = trainable(policy)
    assert any(".lora_A.critic." in n for n in names) and any(
        ".lora_A.default." in n for n in names
    )
    n_base = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    single = Trainer(load_config(lora_config(gpt2_ctx64_path, str(tmp_path))))
    assert n_base == sum(p.numel() for p in single.policy.parameters() if not p.requires_grad)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    trainer.iterate()
    moved = {
        n for n, p in policy.named_parameters() if n in before and not torch.equal(p, before[n])
    }
    assert any(".critic." in n for n in moved) and any(".default." in n for n in moved)
    assert trainable(policy) == names  # switching adapters left the grad flags as they were
    trainer.close()
    single.close()


def test_lora_config_errors(gpt2_ctx64_path, tmp_path):
    for lora, words in (
        ({"r": 0}, "r"),
        ({"dropout": 0.1}, "dropout must be 0.0"),
        ({"rank": 4}, "unknown config key"),
    ):
        cfg = lora_config(gpt2_ctx64_path, str(tmp_path))
        cfg["policy"]["lora"] = lora
        with pytest.raises(ValueError, match=words):
            load_config(cfg)
    cfg = lora_config(gpt2_ctx64_path, str(tmp_path))
    cfg["policy"]["lora"]["adapter_path"] = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a peft adapter folder"):
        Trainer(load_config(cfg))


def test_lora_on_the_embedding_trains_resumes_and_exports(gpt2_ctx64_path, tmp_path):
    """`target_modules` with GPT-2's embedding `wte` (peft's LoRA Embedding layer): the size
    check, the adapter-off reference, the critic adapter, resume and both exports work."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    raw = lora_config(gpt2_ctx64_path, str(tmp_path), critic="separate")
    raw["policy"]["lora"]["target_modules"] = ["wte", "c_attn"]
    cfg = load_config(raw)
    trainer = Trainer(cfg, new_run_dir(cfg, "run"))
    save_config(cfg, trainer.run_dir / "config.yaml")
    names = trainable(trainer.policy)
    assert any(".wte.lora_embedding_A.default" in n for n in names)
    assert any(".wte.lora_embedding_A.critic" in n for n in names)
    trainer.collector.collect()
    stats = apply_kl_penalty(trainer.buffer, trainer.policy, trainer.reference, 0.1, "k1")
    assert abs(stats["kl_to_ref"]) < 1e-5  # the reference is the base: adapters start at 0
    trainer.iterate()
    trainer.iterate()
    embedding_a = [p for n, p in trainer.policy.named_parameters() if "lora_embedding_A" in n]
    assert all(p.abs().sum() > 0 for p in embedding_a)  # A starts at 0 (peft): it has moved
    path = trainer.save()
    resumed = Trainer(cfg, trainer.run_dir, resume=True)
    a, b = trainer.policy.checkpoint_state_dict(), resumed.policy.checkpoint_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed.close()

    ids, mask = make_prompts([5, 9], 10, 0, seed=2)
    expected = actor_logits(trainer.policy.model, ids, mask)
    with trainer.policy.model.disable_adapter():
        assert not torch.allclose(actor_logits(trainer.policy.model, ids, mask), expected)
    export_run(trainer.run_dir, tmp_path / "merged", merge=True, checkpoint=path)
    export_run(trainer.run_dir, tmp_path / "adapter", merge=False, checkpoint=path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(actor_logits(plain, ids, mask), expected, atol=1e-4, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(gpt2_ctx64_path)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(actor_logits(peft_model, ids, mask), expected, atol=1e-5, rtol=0)
    trainer.close()
