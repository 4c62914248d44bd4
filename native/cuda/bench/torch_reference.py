"""The PyTorch side of the CUDA benchmark: the same Llama-style model (RMSNorm,
rotary in transformers' rotate_half layout, causal SDPA attention, SwiGLU),
trained the way PyTorch users train it on one GPU: bf16 autocast, fused AdamW,
eager mode. Prints one JSON line with tokens/s and MFU.

    python3 native/cuda/bench/torch_reference.py --preset gpt2-124m|stage-4096 [--steps 10] [--warmup 3]

Configurations match `caravan-engine cuda-bench --preset ...`; FLOPs use the
same PaLM rule (2 per matmul weight per token + 4·T·d per layer, ×3 for training).
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "gpt2-124m": dict(vocab=50304, d=768, layers=12, heads=12, ffn=2048, B=16, T=1024, whole=True),
    "stage-4096": dict(vocab=32000, d=4096, layers=2, heads=32, ffn=11008, B=4, T=2048, whole=False),
    "tiny": dict(vocab=256, d=128, layers=4, heads=4, ffn=352, B=8, T=128, whole=True),
}
PEAKS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.5), ("H100", 989.4), ("A100", 312.0)]


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.input_layernorm = nn.RMSNorm(d, eps=1e-5)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=1e-5)
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, d = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.heads, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.heads, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, d))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c["vocab"], c["d"]) if c["whole"] else None
        self.layers = nn.ModuleList(Block(c["d"], c["heads"], c["ffn"]) for _ in range(c["layers"]))
        self.norm = nn.RMSNorm(c["d"], eps=1e-5) if c["whole"] else None
        self.lm_head = nn.Linear(c["d"], c["vocab"], bias=False) if c["whole"] else None
        hd = c["d"] // c["heads"]
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(c["T"], dtype=torch.float32), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos()[None, None], persistent=False)
        self.register_buffer("sin", ang.sin()[None, None], persistent=False)

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin)
        if self.lm_head is not None:
            x = self.lm_head(self.norm(x))
        return x


def train_flops_per_token(c):
    per_layer = 4 * c["d"] * c["d"] + 3 * c["d"] * c["ffn"]
    matmul = c["layers"] * per_layer + (c["vocab"] * c["d"] if c["whole"] else 0)
    return 3 * (2 * matmul + c["layers"] * 4 * c["T"] * c["d"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=PRESETS, default="gpt2-124m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    c = PRESETS[args.preset]
    torch.manual_seed(1)
    dev = torch.device("cuda")
    model = Model(c).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    B, T = c["B"], c["T"]
    if c["whole"]:
        inputs = torch.randint(0, c["vocab"], (B, T), device=dev)
        targets = torch.randint(0, c["vocab"], (B, T), device=dev)
    else:
        inputs = torch.randn(B, T, c["d"], device=dev, requires_grad=True)
        grad_out = torch.randn(B, T, c["d"], device=dev) * 1e-3

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(inputs)
        if c["whole"]:
            loss = F.cross_entropy(out.float().view(-1, c["vocab"]), targets.view(-1))
            loss.backward()
        else:
            out.backward(grad_out)  # a pipeline stage also produces its input gradient
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    secs = (time.perf_counter() - t0) / args.steps
    tok_s = B * T / secs
    name = torch.cuda.get_device_name(0)
    peak = next((p for k, p in PEAKS if k in name), 0.0)
    tflops = train_flops_per_token(c) * tok_s / 1e12
    print(json.dumps({"bench": "cuda-torch", "config": args.preset, "gpu": name, "torch": torch.__version__,
                      "step_ms": round(secs * 1e3, 2), "torch_tok_s": round(tok_s), "tflops": round(tflops, 1),
                      "mfu_pct": round(100 * tflops / peak, 2) if peak else None}))


if __name__ == "__main__":
    main()
