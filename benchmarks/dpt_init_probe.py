"""Is a proxy DPT depth model dead before it trains? The final ReLU at initialisation, seed by seed.

At the proxy profile the DPT stand-ins with plain-ViT backbones predicted 0 everywhere from their first
epoch. DPT's depth head ends ``conv1x1 -> ReLU`` (official code, ``non_negative=True``). If that conv's
output is negative at every pixel of every image, the ReLU passes no gradient and the model cannot leave the
constant map. This script builds each stand-in at its proxy size for ``--seeds`` seeds, as the proxy does
(``torch.manual_seed(seed)`` then the constructor), and reports:

* for how many seeds the depth output is 0 at every pixel of a few validation scenes (dead at init);
* how much of the backbone's spatial variation reaches the head: the std over positions of the tapped
  tokens, of the finest fusion output, and of the final conv's output (before the ReLU), averaged over
  channels and images, beside the final conv's mean.

The backbone is at its own initialisation, unless ``--pretrained RESULTS_DIR`` names a results root that
holds the profile's backbone pretrainings (``runs/<key>.pt``, kept by the suite): then each model is built
exactly as a dense row of the suite builds it, pretrained backbone loaded. A missing pretraining stops the
script, unless ``--pretrain-missing`` lets it train that pretraining first (at proxy on CPU: about half an
hour for ViT-T). ``--readout`` builds the Read-ablation variant (default: each model's own).

CPU, about a minute:

    python benchmarks/dpt_init_probe.py --seeds 12
    python benchmarks/dpt_init_probe.py --seeds 12 --pretrained results      # after the proxy suite ran
    python benchmarks/dpt_init_probe.py --seeds 6 --models dpt_tiny --readout project \
        --pretrained /tmp/proxy_cpu --pretrain-missing                          # CPU, ~30 min the first time
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch

import lvit
from lvit.data import build_dataset
from lvit.engine.run import Training, backbone_pretraining, run_with_weights
from lvit.experiments.recipes import DEPTH_PROFILES, model_overrides

STAND_INS = ("dpt_tiny", "dpt_small", "dpt_localvit_tiny")


def build(
    name: str, seed: int, recipe: dict[str, Any], profile: str, args: argparse.Namespace
) -> torch.nn.Module:
    """The stand-in at ``seed``'s initialisation; with ``--pretrained``, through the suite's own path."""
    kwargs = {**({"readout": args.readout} if args.readout else {}), **model_overrides(name, "depth", recipe)}
    if args.pretrained is None:
        torch.manual_seed(seed)
        return lvit.create_model(name, **kwargs)
    dense = Training(name, kwargs, "depth", recipe, seed, profile, torch.device("cpu"), args.pretrained,
                     "data")  # fmt: skip
    pretraining = backbone_pretraining(dense)
    if run_with_weights(pretraining) is None and not args.pretrain_missing:  # build_model would train it
        raise SystemExit(f"no stored pretraining of {pretraining.model} at {profile} with its weights under "
                         f"{args.pretrained}; run the {profile} suite first, or pass --pretrain-missing")
    return dense.build_model()


def probe(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        taps, _ = model.forward_taps(images)
        finest = model.forward_features(images)[-1]
        before_relu = model.head[:-2](finest)  # the head up to its final conv: what the ReLU sees
        depth = model(images)
    prefix = model.backbone.num_prefix_tokens
    return dict(
        dead=float(depth.gt(0).sum() == 0),
        tap_spatial_std=statistics.mean(float(t[:, prefix:].std(1).mean()) for t in taps),
        fusion_spatial_std=float(finest.std((2, 3)).mean()),
        head_spatial_std=float(before_relu.std((2, 3)).mean()),
        head_mean=float(before_relu.mean()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--images", type=int, default=4, help="validation scenes per forward")
    parser.add_argument("--models", nargs="+", default=list(STAND_INS))
    parser.add_argument("--profile", default="proxy", choices=sorted(DEPTH_PROFILES))
    parser.add_argument("--pretrained", metavar="RESULTS_DIR",
                        help="load the backbones the suite pretrained (default: backbones at initialisation)")
    parser.add_argument("--pretrain-missing", action="store_true",
                        help="with --pretrained: train a missing backbone pretraining there first")
    parser.add_argument("--readout", choices=("ignore", "add", "project"),
                        help="the Read-ablation variant (default: each model's own readout)")
    parser.add_argument("--out", help="write every (model, seed) record as JSON to this path")
    args = parser.parse_args()
    recipe = dict(DEPTH_PROFILES[args.profile])
    scenes = build_dataset("scenes", "val", {**recipe, "val_samples": args.images})
    images = torch.stack([scenes[i]["image"] for i in range(args.images)])
    records = []
    print("| model | dead at init | token spatial std | fusion spatial std | pre-ReLU spatial std | "
          "pre-ReLU mean (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        runs = [probe(build(name, seed, recipe, args.profile, args), images)
                for seed in range(args.seeds)]
        records += [dict(model=name, seed=seed, **run) for seed, run in enumerate(runs)]

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        dead = int(sum(r["dead"] for r in runs))
        print(f"| {name} | {dead} of {len(runs)} | {median('tap_spatial_std'):.3f} | "
              f"{median('fusion_spatial_std'):.4f} | {median('head_spatial_std'):.5f} | "
              f"{median('head_mean'):+.4f} |")
    if args.out:
        with open(args.out, "w") as handle:
            meta = dict(torch=torch.__version__, lvit=lvit.__version__, profile=args.profile,
                        pretrained=args.pretrained, readout=args.readout)
            json.dump(dict(meta, records=records), handle, indent=1)


if __name__ == "__main__":
    main()
