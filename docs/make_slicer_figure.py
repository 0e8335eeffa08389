"""Render Resources/Screenshots/slicer_overlay.png: what the DiffReg panel shows in a slice view, through real MRML.

The extension catalog shows this image (EXTENSION_SCREENSHOTURLS in the top-level CMakeLists.txt).

The Slicer application cannot run here, so the figure is composed from the
output nodes the module fills (X-ray copy and DRR on the detector plane) in a
slicer-core scene: the phantom CT and a simulated X-ray as nodes, Render DRR
at a start 6 deg / 40 mm off, then Register. Run from the repository root:

    python docs/make_slicer_figure.py            # needs pip install -e ".[test]" (slicer-core)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import slicer
import torch

from DiffRegLogic import evaluation, figures, mrml
from DiffRegLogic.drr import render
from DiffRegLogic.geometry import Detector, clinical_to_pose
from DiffRegLogic.volume.phantoms import chest_phantom_hu
from DiffRegLogic.mrml.settings import Setup

OUTPUT = Path(__file__).resolve().parents[1] / "Resources" / "Screenshots" / "slicer_overlay.png"
"""Where the figure goes by default: the extension-level screenshot the catalog points to."""


def main(out: Path) -> None:
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    hu, grid = chest_phantom_hu()
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom CT")
    mrml.write_volume_array(ct, hu.numpy(), grid.numpy())
    volume = mrml.volume_from_node(ct)
    truth = clinical_to_pose(25.0, -10.0, 600.0, volume.center)
    detector = Detector(200, 200, 1020.0, (3.0, 3.0))
    with torch.no_grad():
        image = render(volume, detector, truth)[0].numpy()
    xray = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
    mrml.write_volume_array(xray, image[None], np.diag([-3.0, -3.0, 1.0, 1.0]))
    setup = Setup(inputVolume=ct, xrayVolume=xray, sdd=1020.0, primaryAngle=29.0, secondaryAngle=-14.0,
                  sourceToIsocenter=640.0, levels="8 4 2", device="cpu")
    outputs = mrml.render_preview(scene, setup)
    start_drr = mrml.voxels_of(outputs.drr)[0]
    done = mrml.run_registration(scene, setup)
    drr = mrml.voxels_of(outputs.drr)[0]
    fixed = mrml.voxels_of(outputs.xray_copy)[0]
    points = evaluation.target_points(volume, 2000)
    start = mrml.initial_pose(setup, volume, mrml.geometry_from_xray(xray))
    before = float(evaluation.mtre(start, truth, points))
    after = float(evaluation.mtre(done.result.pose, truth, points))
    row = figures.panel_row(
        [figures.edge_overlay(fixed, start_drr), figures.difference(fixed, start_drr), figures.edge_overlay(fixed, drr),
         figures.blend(fixed, drr, 0.5), figures.difference(fixed, drr)],
        [f"start: DRR edges (mTRE {before:.0f} mm)", "start: difference", f"registered (mTRE {after:.2f} mm)",
         "registered: 50 % blend", "registered: difference"])
    figures.save_png(out, row)
    print(f"{done.message}; mTRE {before:.1f} -> {after:.2f} mm; wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT)
