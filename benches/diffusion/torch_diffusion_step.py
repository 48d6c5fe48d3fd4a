"""PyTorch (diffusers + PEFT) peer of anneal's diffusion step benchmark
(benches/src/bin/diffusion_step.rs; benches/diffusion/run.sh runs both).

Builds the UNet2DConditionModel of configs.json with diffusers' default init (seed 0),
f32 on the CPU, and times one of:
  train-full : forward + epsilon MSE + backward + AdamW over every weight
  train-lora : the same with a PEFT LoRA (r 8, alpha 16) on to_q, to_k, to_v, to_out.0
  denoise    : one no-grad UNet forward on a classifier-free-guidance batch of 2
Prints one JSON line: impl, config, mode, step_s (median of the timed steps), peak_rss_mib.

    python torch_diffusion_step.py --config tiny --mode train-full --steps 10
"""

import argparse
import json
import os
import resource
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--mode", default="train-full", choices=["train-full", "train-lora", "denoise"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    cfg = json.load(open(os.path.join(HERE, "configs.json")))[a.config]
    torch.manual_seed(0)
    unet_cfg = {k: v for k, v in cfg["unet"].items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**unet_cfg)
    c, s = unet_cfg["in_channels"], unet_cfg["sample_size"]
    cross, tokens = unet_cfg["cross_attention_dim"], cfg["tokens"]
    g = torch.Generator().manual_seed(1)

    if a.mode == "denoise":
        unet.eval()
        unet.requires_grad_(False)
        x = torch.randn(2, c, s, s, generator=g)
        ctx = torch.randn(2, tokens, cross, generator=g)
        t = torch.tensor([500])

        def step():
            with torch.no_grad():
                unet(x, t, ctx).sample
    else:
        b = cfg["batch"]
        if a.mode == "train-lora":
            from peft import LoraConfig

            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=8, lora_alpha=16, init_lora_weights="gaussian",
                                        target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        x = torch.randn(b, c, s, s, generator=g)
        noise = torch.randn(b, c, s, s, generator=g)
        ctx = torch.randn(b, tokens, cross, generator=g)
        t = torch.randint(0, 1000, (b,), generator=g)

        def step():
            eps = unet(x, t, ctx).sample
            loss = torch.nn.functional.mse_loss(eps, noise)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "impl": "pytorch", "config": a.config, "mode": a.mode, "threads": torch.get_num_threads(),
        "step_s": round(statistics.median(times), 5), "peak_rss_mib": round(peak_rss_mib(), 1),
    }))


if __name__ == "__main__":
    main()
