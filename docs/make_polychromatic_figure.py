"""The README's polychromatic figure: the phantom as a monochromatic DRR, a polychromatic DRR and a realistic radiograph.

    python docs/make_polychromatic_figure.py        # writes docs/polychromatic/radiographs.png

Same CT (the built-in chest phantom), same view (the demo's target pose and
200 x 200 detector). Each panel is windowed on its own percentiles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from DiffRegLogic import Detector, render
from DiffRegLogic.experiments.demo import DEMO_DETECTOR, demo_poses
from DiffRegLogic.figures import grey, panel_row, save_png
from DiffRegLogic.physics.materials import MaterialVolume
from DiffRegLogic.volume.phantoms import chest_phantom
from DiffRegLogic.physics import Beam, tube_spectrum
from DiffRegLogic.drr.radiograph import simulate_radiograph
from DiffRegLogic.physics.realism import Realism

OUT = Path(__file__).resolve().parent / "polychromatic" / "radiographs.png"


def main() -> None:
    volume = chest_phantom()
    detector = Detector(**DEMO_DETECTOR)
    pose = demo_poses(volume.center.to(torch.float64))[0]
    panels, labels = [], []
    with torch.no_grad():
        panels.append(render(volume, detector, pose)[0])
        labels.append("monochromatic DRR")
        for kvp in (60, 120):
            materials = MaterialVolume.from_volume(volume, Beam(tube_spectrum(kvp)))
            panels.append(render(materials, detector, pose)[0])
            labels.append(f"polychromatic, {kvp} kVp")
        materials = MaterialVolume.from_volume(volume, Beam(tube_spectrum(80)))
        realism = Realism(photons_per_pixel=2e4, blur_mm=0.5, scatter_fraction=0.2, heel=0.1, seed=0)
        panels.append(simulate_radiograph(materials, detector, pose, realism)[0])
        labels.append("80 kVp, realism on")
    save_png(OUT, panel_row([grey(p) for p in panels], labels))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
