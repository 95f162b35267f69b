#!/usr/bin/env python3
"""The peer for `sctrain bench train`: Hugging Face BertForMaskedLM of our 160m size
(12 layers x 1024, 16 heads, FFN 4096, vocab 32000), SDPA attention, bf16 autocast,
AdamW (fused, no decay on biases/LayerNorms), trained the same way on random tokens:
15% of positions carry labels, full-length sequences, no padding, dropout 0.

Prints one JSON line with the same fields as ours: tokens_per_s, tflops (same formula:
6*params*tokens + 12*n_layers*d_model*len^2 per sequence), mem_peak_gib, step_ms.

  python3 scripts/bench_bert.py --batch-size 8 --seq-len 2048
  python3 scripts/bench_bert.py --batch-size 2 --seq-len 8192 --clip 0
Needs: torch (CUDA) and transformers (pip install transformers).
"""
import argparse
import json
import sys
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--act", default="gelu", help="hidden_act: gelu (exact) or gelu_pytorch_tanh (as model.activation gelu_tanh)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--clip", type=float, default=1.0, help="global grad-norm clip; 0: off")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default="", help="also append the JSON line to this file")
    args = ap.parse_args()

    try:
        from transformers import BertConfig, BertForMaskedLM
    except ImportError:
        sys.exit("bench_bert.py needs transformers: pip install transformers")

    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.ffn,
        hidden_act=args.act,
        max_position_embeddings=max(512, args.seq_len),
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        tie_word_embeddings=True,
    )
    model = BertForMaskedLM._from_config(cfg, attn_implementation="sdpa").to(dev)
    model.train()
    params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8, fused=fused)

    B, L = args.batch_size, args.seq_len
    g = torch.Generator().manual_seed(0)
    pool = []
    for _ in range(4):
        ids = torch.randint(5, args.vocab, (B, L), generator=g)
        ids[:, 0] = 1  # CLS
        labels = torch.full((B, L), -100)
        pick = torch.rand((B, L), generator=g) < 0.15
        pick[:, 0] = False
        labels[pick] = ids[pick]
        ids[pick] = 2  # MASK
        pool.append((ids.to(dev), labels.to(dev)))

    use_autocast = dev.type == "cuda"

    def step(i):
        ids, labels = pool[i % len(pool)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_autocast):
            out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        return out.loss.item()  # one host sync per step, as ours

    status, loss, secs = "ok", float("nan"), 0.0
    try:
        for i in range(args.warmup):
            step(i)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = step(args.warmup + i)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError as e:
        status = "oom"
        print(f"bench_bert: out of memory: {e}", file=sys.stderr)

    tokens = args.steps * B * L
    flops = args.steps * B * (6.0 * params * L + 12.0 * args.layers * args.hidden * L * L)
    result = {
        "impl": "hf-bert",
        "status": status,
        "attention": "softmax(" + str(model.config._attn_implementation) + ")",
        "activation": args.act,
        "n_layers": args.layers,
        "d_model": args.hidden,
        "params": params,
        "batch_size": B,
        "seq_len": L,
        "clip": args.clip > 0,
        "device": str(dev),
        "steps": args.steps,
        "step_ms": secs / args.steps * 1e3 if status == "ok" else 0.0,
        "tokens_per_s": tokens / secs if status == "ok" else 0.0,
        "tflops": flops / secs / 1e12 if status == "ok" else 0.0,
        "mem_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
        "loss": loss,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
