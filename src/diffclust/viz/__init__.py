"""Plots of clusterings (matplotlib, Agg canvas; pyplot is never used, nothing is shown).

Every ``plot_*`` function takes plain arrays / lists / dicts and returns a
``matplotlib.figure.Figure``; every ``save_*`` twin writes it as a PNG atomically.
"""

from ._common import figure_to_png, mosaic, new_figure, save_figure, to_display_images
from .confusion import (
                        ReorderedConfusion,
                        plot_confusion_matrix,
                        reorder_confusion,
                        save_confusion_matrix,
)
from .curves import (
                        plot_cluster_sizes,
                        plot_cmax_curve,
                        plot_ots_curve,
                        plot_training_curves,
                        read_metrics_jsonl,
                        save_cluster_sizes,
                        save_cmax_curve,
                        save_ots_curve,
                        save_training_curves,
)
from .embedding import embed_2d, plot_embedding, plot_embedding_2d, save_embedding_2d
from .images import (
                        cluster_gallery_indices,
                        plot_cluster_gallery,
                        plot_sample_grid,
                        save_cluster_gallery,
                        save_sample_grid,
)

__all__ = ["ReorderedConfusion", "cluster_gallery_indices", "embed_2d", "figure_to_png",
           "mosaic", "new_figure", "plot_cluster_gallery", "plot_cluster_sizes",
           "plot_cmax_curve", "plot_confusion_matrix", "plot_embedding", "plot_embedding_2d",
           "plot_ots_curve", "plot_sample_grid", "plot_training_curves", "read_metrics_jsonl",
           "reorder_confusion", "save_cluster_gallery", "save_cluster_sizes", "save_cmax_curve",
           "save_confusion_matrix", "save_embedding_2d", "save_figure", "save_ots_curve",
           "save_sample_grid", "save_training_curves", "to_display_images"]
