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
# # LocalViT — training curves, figures (a)–(f)
#
# The paper plots, per epoch, the top-1 accuracy (a–c) and the training loss (d–f) of three transformers
# with and without locality: DeiT-T vs LocalViT-T, PVT-T vs LocalViT-PVT, TNT-T vs LocalViT-TNT. In
# every pair the LocalViT form learns faster and ends higher (72.2 → 74.8, 75.1 → 78.2, 73.6 → 75.9 %
# top-1), the claim tested here (*convolution improves the baseline transformer*, on every pair). This
# notebook trains the six models at the chosen profile, records their per-epoch history, and draws the
# six panels. At the smoke profile each model trains for one epoch, so the curves are single points.

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | proxy | paper
seeds: int = 0  # number of seeds (0..N-1); 0: the experiment's default at this profile
device: str = "auto"  # auto | cpu | cuda | cuda:N
data_root: str = ""  # dataset root (paper profile); empty: <project>/data
results_dir: str = ""  # results root; empty: <project>/results
rows: list = []  # row labels to run; empty: every row
reuse: bool = True  # reuse stored results of the same configuration instead of retraining

# %%
# NBVAL_IGNORE_OUTPUT
from lvit.reproduce import run_notebook_experiment

EXPERIMENT = "localvit_curves"
params, results = run_notebook_experiment(EXPERIMENT, profile, seeds, device, data_root, results_dir,
                                          rows, reuse)

# %% [markdown]
# ## Final epoch: paper vs ours
#
# The paper's numbers are the curves' end points (top-1 after 300 epochs on ImageNet); it prints no
# final training loss. *agreement* and Kendall τ compare the ordering of the rows.

# %%
# NBVAL_CHECK_OUTPUT
from IPython.display import Markdown

from lvit.report import summary_markdown

Markdown(summary_markdown(EXPERIMENT, results))

# %% [markdown]
# ## Figures (a)–(f)

# %%
from lvit.experiments import get_experiment
from lvit.report import plot_training_curves, save_figure
from lvit.results import load_histories

histories = load_histories(params.results_dir, params.profile, EXPERIMENT)
histories = histories[histories["seed"].isin(params.seeds)]
# The experiment lists its rows as (baseline, LocalViT form) pairs, in the paper's panel order.
labels = [row.label for row in get_experiment(EXPERIMENT).rows]
pairs = list(zip(labels[::2], labels[1::2], strict=True))
figure = plot_training_curves(histories, pairs, accuracy="val_top1", loss="train_loss",
                              profile=params.profile)
save_figure(figure, params.figures_dir, EXPERIMENT);

# %%
# NBVAL_IGNORE_OUTPUT
from lvit.report import provenance_summary

provenance_summary(results)
