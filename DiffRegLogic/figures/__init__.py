"""Pictures for registration reports: overlays and checkerboards (`composites`), line charts (`plots`).

The pictures are RGB images, numpy arrays (H, W, 3) uint8 that `save_png`
writes to disk. `compare` holds the float maps (z-scores, difference,
checkerboard, float64 (H, W)) that the pictures and the slice views of
`DiffRegLogic.mrml` share.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".composites": "EDGE_SIGMA EDGE_PERCENTILE EDGE_FLOOR SEPARATOR_PX drr_edges edge_overlay checkerboard "
                   "before_after blend difference grey panel_row save_png overlay_rgb",
    ".compare": "zscore difference_map checkerboard_mask checkerboard_map",
    ".plots": "PALETTE PlotFrame plot_frame line_plot",
})
__all__ = sorted(__getattr__.table)
