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
# # DPT — inference resolution (Figure 4)
#
# DPT is trained at 384×384. The paper conjectures that a global receptive field in every layer makes it
# less dependent on the inference resolution than a convolutional network, and shows (Figure 4) the
# relative loss in performance when DPT is run at larger sizes: small for DPT, larger for MiDaS. The
# figure's values were not retrieved, so nothing published is compared here; the claim tested is a
# stated bound: up to twice the training side, mean AbsRel is at most 10 % worse than at the training
# side. This notebook trains one DPT-Hybrid stand-in at the profile's size and evaluates it at sizes
# scaled like the paper's (384 … 768 px, times the profile's training side / 384).

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | proxy | paper
seeds: int = 0  # number of seeds (0..N-1); 0: the experiment's default at this profile
device: str = "auto"  # auto | cpu | cuda | cuda:N
data_root: str = ""  # dataset root (paper profile); empty: <project>/data
results_dir: str = ""  # results root; empty: <project>/results
rows: list = []  # inference sides to evaluate (paper scale, as row labels); empty: all
reuse: bool = True  # reuse stored results of the same configuration instead of retraining

# %%
# NBVAL_IGNORE_OUTPUT
from lvit.reproduce import run_notebook_experiment

EXPERIMENT = "dpt_inference_resolution"
params, results = run_notebook_experiment(EXPERIMENT, profile, seeds, device, data_root, results_dir,
                                          rows, reuse)

# %% [markdown]
# ## Mean AbsRel per inference side, and the relative loss
#
# Rows are the paper-scale inference side; *relative loss* is (AbsRel at that side − AbsRel at 384) /
# AbsRel at 384, in percent (lower is better; 0 at the training side).

# %%
# NBVAL_CHECK_OUTPUT
from IPython.display import Markdown, display

from lvit.report import inference_resolution_curve, summary_markdown

curve = inference_resolution_curve(results)
relative = curve.groupby("side")["relative_loss"].agg(["mean", "std"]).round(1)
display(Markdown(summary_markdown(EXPERIMENT, results)))
relative

# %%
from lvit.experiments import get_experiment
from lvit.report import plot_inference_resolution, save_figure

trained_at = get_experiment(EXPERIMENT).recipe(params.profile)["image_size"]
figure = plot_inference_resolution(curve, "mean AbsRel", profile=params.profile, trained_at=trained_at)
save_figure(figure, params.figures_dir, EXPERIMENT);

# %%
# NBVAL_IGNORE_OUTPUT
from lvit.report import provenance_summary

provenance_summary(results)
