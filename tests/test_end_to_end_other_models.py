"""calibrate + verify on a diffusers transformer and a BERT encoder built from small configs with SEEDED
RANDOM WEIGHTS.

No diffusion weights exist offline, so this checks the plumbing and the per-site numbers on random
activations (joint image+text attention of SD3, head dim 64; BERT self-attention, head dim 64), not output
quality. The real-weights end to end is tests/test_end_to_end_demo.py (SmolLM2).
"""
import json

import pytest
import torch
from typer.testing import CliRunner

from sage_cli.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_sd3_folder(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=64, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=256, pooled_projection_dim=32, out_channels=4,
        pos_embed_max_size=32,
    )
    folder = tmp_path_factory.mktemp("tiny_sd3")
    model.save_pretrained(folder)
    return folder


def test_diffusers_transformer_calibrates_and_verifies(tiny_sd3_folder):
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", str(tiny_sd3_folder), "--backend", "reference", "--json"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert set(cfg["sites"]) == {"transformer_blocks.0.attn#0", "transformer_blocks.1.attn#0"}
    for site in cfg["sites"].values():
        assert site["stats"]["calls"] >= 1 and site["stats"]["nonfinite_values"] == 0
        assert site["fallback"] is None or "budget" in site["fallback"]
    assert (tiny_sd3_folder / "sage" / "scales.safetensors").is_file()

    r = runner.invoke(app, ["verify", str(tiny_sd3_folder), "--backend", "reference", "--json"])
    rep = json.loads(r.stdout)
    assert rep["kind"] == "diffusers-model"
    e = rep["end_to_end"]
    assert e["outputs"] >= 1 and e["cos_min"] >= 0.99 and e["psnr_db_min"] > 20, e
    assert {s["site"] for s in rep["sites"]} == set(cfg["sites"])
    assert r.exit_code == (0 if rep["ok"] else 1)
    assert rep["runtime"]["totals"].get("sage-reference", 0) >= 2, rep["runtime"]
    assert (tiny_sd3_folder / "sage" / "report.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(vocab_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    BertModel(cfg).save_pretrained(folder)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters,
                                                 *("##" + c for c in letters)]))
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def test_encoder_calibrates_and_verifies(tiny_bert_folder):
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", str(tiny_bert_folder), "--backend", "reference", "--json"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert set(cfg["sites"]) == {f"encoder.layer.{i}.attention.self#0" for i in range(2)}
    r = runner.invoke(app, ["verify", str(tiny_bert_folder), "--backend", "reference", "--json"])
    rep = json.loads(r.stdout)
    assert rep["kind"] == "encoder" and r.exit_code == 0 and rep["ok"], rep["checks"]
    assert rep["end_to_end"]["cos_min"] >= 0.99
    # sage really ran at every site end to end (not a silent fall-back to full precision)
    assert set(rep["runtime"]["sites"]) == set(cfg["sites"])
    assert all(set(c) == {"sage-reference"} for c in rep["runtime"]["sites"].values()), rep["runtime"]
