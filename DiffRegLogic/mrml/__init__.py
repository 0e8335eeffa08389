"""The only bridge between MRML nodes and the engine's types.

Works inside 3D Slicer and outside it with the ``slicer-core`` wheel (real
MRML, no Qt): the Slicer module `DiffReg` calls nothing else, and the tests
run every function here against a real ``vtkMRMLScene``. No Qt, no GUI.

What the nodes mean
-------------------
* **CT**: a scalar volume node in Hounsfield units. Its voxels are placed in
  world RAS by its IJK->RAS matrix *and* its parent transforms (linear ones;
  a warping transform is refused), so a CT under a transform is rendered
  where Slicer shows it. World RAS is the engine's world.
* **X-ray**: a single-slice scalar volume node, array (1, rows, cols); row 0
  of the array is detector row 0. Its spacing gives the pixel spacing unless
  the geometry says otherwise; DICOM tags (source-to-detector distance,
  imager pixel spacing, C-arm angles) are read with pydicom from the file the
  node was loaded from (`dicom_file_of`).
* **Output transform** (``transformMeaning``):

  - ``"C-arm in patient"`` (default): matrix to parent = world_from_camera,
    i.e. the C-arm frame (X-ray source at the origin, +z along the principal
    ray towards the detector, +x along detector columns, +y along rows; mm)
    placed in patient RAS. The CT does not move. The outputs that live on
    the detector (the DRR, a copy of the X-ray, the C-arm outline model) are
    defined in camera coordinates and put under this transform, so in 3D
    they appear on the detector plane beside the CT, with the source and
    the detector outline shown.
  - ``"patient in C-arm"``: matrix to parent = camera_from_world x (the CT's
    current parent-to-world). Make it the CT's (only) parent transform to
    move the CT into the C-arm frame instead; the detector outputs then
    stay unparented, already in camera coordinates. DiffReg never sets the
    CT's parent itself (input nodes are never modified).

* **Detector-plane volumes** (the DRR and the X-ray copy): voxel (i=col,
  j=row, k=0) sits at camera point ((col - cx) du, (row - cy) dv, sdd), so
  the two overlay pixel for pixel in a slice view rotated to their plane.
  The DRR holds line integrals of mu (dimensionless, bone bright); the X-ray
  copy holds the registered image after the intensity conversion.

Modules: `matrices` (VTK <-> numpy, parent transforms), `nodes` (CT and X-ray
nodes in, arrays out), `carm` (the X-ray's C-arm geometry, the detector, the
C-arm model), `poses` (transform nodes <-> poses, the start initialiser),
`checks` (the panel's nodes and numbers checked before any work, torch-free),
`outputs` (output nodes, undone when a run fails), `overlay` (slice-view overlay), `actions` (render,
register, retry on the CPU), `settings` (every panel setting, torch-free),
`training` (the "Train pose network" section's inputs, command line and
background process; importable without torch),
`selftest` (the self-test scenario), `dependencies` (missing requirements,
torch-free). Names are imported on first use: `settings` and
`dependencies` need neither torch nor VTK.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".matrices": "array_from_vtk_matrix vtk_matrix_from_array parent_to_world ijk_to_ras set_ijk_to_ras "
                 "transform_matrix set_transform_matrix",
    ".nodes": "voxels_of volume_from_node dicom_file_of xray_from_node write_volume_array",
    ".carm": "XRayGeometry geometry_from_xray fill_geometry detector_from_setup detector_plane_matrix carm_polydata",
    ".poses": "transform_from_pose pose_from_transform TransformInitializer initializer_from_setup initial_pose "
              "network_initializer",
    ".outputs": "ROLE_MOVING ROLE_FIXED ROLE_DRR ROLE_XRAY_COPY ROLE_MODEL ROLE_OVERLAY ROLE_TABLE ROLE_CHART "
                "CARM_COLOR Outputs ensure_outputs place_outputs write_pose write_detector_images existing_outputs "
                "loss_chart write_loss_curve DERIVED_ROLES restore_on_failure",
    ".checks": "check_setup check_outputs",
    ".overlay": "overlay_image show_overlay",
    ".actions": "Inputs read_inputs OutOfMemory with_cpu_fallback registration_options render_preview SceneResult "
                "run_registration",
    ".settings": "Setup",
    ".training": "TrainingFiles TrainingMonitor TrainingRun check_training_fields export_training_inputs "
                 "training_command engine_root",
})
__all__ = sorted(__getattr__.table)
