"""A real client: ``transformers``' ``generate()`` on a tiny float16 Qwen2-VL with random weights.

Nothing is downloaded: the model is built from a config. Two failure modes of float16
inference are produced the way they happen in real models, by activations past 65504:

* a logit overflows to ``+inf``: torch's softmax turns the row into NaN and ``generate``
  dies in ``torch.multinomial``; under ``stablesoftmax.patched()`` the row's limit is
  "all mass on that token", and generation goes on;
* an MLP activation overflows to ``inf`` and the next RMSNorm turns it into NaN
  (``inf * rsqrt(inf) = inf * 0``): the patch cannot invent an answer, but the error names
  the row, the NaN count, the likely cause and the fix.
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config: nothing may be fetched

import pytest
import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

import stablesoftmax as ss

VOCAB = 256
HIDDEN = 64
TOKEN = 77  # the token whose logit overflows
FLOAT16_MAX = torch.finfo(torch.float16).max


def _tiny_model() -> Qwen2VLForConditionalGeneration:
    """A 2-layer Qwen2-VL (and a 1-block vision tower the config requires), float16, random weights.

    Embedding column 0 is set to 1 for every token, so the residual stream is dominated by a
    positive component 0 and the final RMSNorm output has ``h[0] ~ sqrt(HIDDEN) = 8`` at every
    position: a fixed direction the tests can aim weights at.
    """
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": HIDDEN,
            "num_heads": 2,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=250,
        video_token_id=251,
        vision_start_token_id=252,
        vision_end_token_id=253,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float16).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 1.0
    return model


def _prompt(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 200, (batch, 6), generator=torch.Generator().manual_seed(1))
    return ids, torch.ones_like(ids)


SAMPLING = {
    "defaults": {},
    "top_k=50, top_p=0.9, temperature=0.7": {"top_k": 50, "top_p": 0.9, "temperature": 0.7},
}


@pytest.mark.parametrize("sampling", list(SAMPLING))
def test_generate_survives_a_logit_that_overflows_to_inf(sampling):
    model = _tiny_model()
    with torch.no_grad():  # aim lm_head row TOKEN at h[0] ~ 8: a logit of ~240000, past float16's 65504
        model.lm_head.weight[TOKEN].zero_()
        model.lm_head.weight[TOKEN, 0] = 30000.0
    ids, mask = _prompt(batch=2)

    seen: dict[str, torch.Tensor] = {}
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.update(h=args[0], logits=out))
    with torch.no_grad():
        model(ids, attention_mask=mask)
    hook.remove()
    assert torch.isfinite(seen["h"]).all() and seen["h"].abs().max() < FLOAT16_MAX  # finite input ...
    assert torch.isfinite(model.lm_head.weight).all()
    logits = seen["logits"]
    assert logits.dtype == torch.float16
    assert (logits[..., TOKEN] == float("inf")).all()  # ... overflows in lm_head's float16 matmul
    assert torch.isfinite(logits[..., :TOKEN]).all() and torch.isfinite(logits[..., TOKEN + 1 :]).all()

    kwargs = {"attention_mask": mask, "do_sample": True, "max_new_tokens": 3, **SAMPLING[sampling]}
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="probability tensor contains either") as plain:
        model.generate(ids, **kwargs)
    assert not isinstance(plain.value, ss.StableSoftmaxError)

    originals = (torch.nn.functional.softmax, torch.multinomial)
    torch.manual_seed(0)
    with ss.patched():
        out = model.generate(ids, **kwargs)
    assert (torch.nn.functional.softmax, torch.multinomial) == originals  # restored on exit
    assert torch.equal(out[:, : ids.shape[1]], ids)
    new = out[:, ids.shape[1] :]
    assert new.shape == (2, 3)
    assert (new == TOKEN).all()  # every step overflowed, and all the mass went to the +inf logit


def test_generate_on_nan_logits_names_row_cause_and_fix():
    model = _tiny_model()
    mlp = model.model.language_model.layers[-1].mlp
    with torch.no_grad():  # gate and up read h[0] ~ 8: 128 products of ~64, times 1000: ~8e6, past 65504
        mlp.gate_proj.weight[:, 0] = 1.0
        mlp.up_proj.weight[:, 0] = 1.0
        mlp.down_proj.weight[0, :] = 1000.0
    ids, mask = _prompt(batch=1)
    kwargs = {"attention_mask": mask, "do_sample": True, "max_new_tokens": 3}

    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mlp.down_proj.register_forward_hook(lambda module, args, out: seen.update(mlp=out)),
        model.lm_head.register_forward_hook(lambda module, args, out: seen.update(logits=out)),
    ]
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for hook in hooks:
        hook.remove()
    assert (seen["mlp"][..., 0] == float("inf")).all()  # the activation overflows ...
    assert torch.isnan(seen["logits"][0, -1]).all()  # ... and the final RMSNorm makes it NaN (inf * 0)

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="probability tensor contains either"):
        model.generate(ids, **kwargs)
    torch.manual_seed(0)
    with ss.patched(), pytest.raises(ss.StableSoftmaxError) as info:
        model.generate(ids, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert re.search(r"\brow 0: \d+ NaN\b", message), message  # e.g. "row 0: 256 NaN, 0 inf, 0 negative of 256"
    assert "float16 overflow" in message
    assert "bfloat16" in message and "float32" in message

    model.to(torch.bfloat16)  # the fix the message gives: the same weights in bfloat16 do not overflow
    torch.manual_seed(0)
    with ss.patched():
        out = model.generate(ids, **kwargs)
    assert out.shape == (1, ids.shape[1] + 3)
