# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LocalViT — Params and FLOPs of every table row
#
# Every LocalViT table prints the model size (Params, millions) and cost (FLOPs, really GMACs of one
# 224×224 image) beside the accuracy. The paper's claim is that locality is almost free: the depth-wise
# convolution adds ~0.1 M parameters and no measurable FLOPs to DeiT-T, while SE with a small reduction
# (SE-4) is the one variant that grows the model (9.4 M). This notebook counts both columns for every row
# of the expansion-ratio, activation and placement tables with `lvit.complexity` (the paper's counting
# convention; see its docstring) and compares them with the printed values. The counts depend on the
# paper-scale architecture only, so they are the same at every profile and are checked exactly.

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | proxy | paper (the counts do not depend on it)
seeds: int = 1  # unused here; accepted so that `lvit reproduce --seeds` applies to every notebook
device: str = "auto"  # auto | cpu | cuda | cuda:N (counting runs on the CPU)
data_root: str = ""  # unused here
results_dir: str = ""  # results root; empty: <project>/results
experiments: list = []  # LocalViT experiments to count; empty: all of them

# %%
from lvit.reproduce import validate_parameters

params = validate_parameters(profile=profile, seeds=seeds, device=device, data_root=data_root,
                             results_dir=results_dir)
for name in experiments:
    validate_parameters(profile=profile, seeds=seeds, experiment=name)  # unknown names stop here

# %%
import pandas as pd

from lvit.complexity import complexity_rows
from lvit.report import plot_complexity, save_figure

counts = pd.DataFrame([vars(r) | {"params_match": r.params_match, "flops_match": r.flops_match}
                       for r in complexity_rows(experiments or None)])

# %% [markdown]
# Ours vs printed. *match* means our count, rounded to the digits the paper printed, equals the printed
# value.

# %%
# NBVAL_CHECK_OUTPUT
shown = counts[["experiment", "row", "params_m", "published_params_m", "params_match",
                "flops_g", "published_flops_g", "flops_match"]].round({"params_m": 3, "flops_g": 4})
with pd.option_context("display.max_rows", 100, "display.width", 200):
    print(shown.to_string(index=False))
for column in ("params", "flops"):
    match = shown[f"{column}_match"]
    print(f"{column}: {match.eq(True).sum()} of {match.notna().sum()} printed values matched")

# %%
figure = plot_complexity(counts)
save_figure(figure, params.figures_dir, "complexity");
