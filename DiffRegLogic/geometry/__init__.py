"""C-arm geometry: the detector, the pose, and every parameterisation of the pose.

The one convention (README, "Geometry"):

* World = the CT's physical space in millimetres, RAS.
* Camera (C-arm) frame: pinhole camera with the X-ray **source at the origin**,
  +z along the principal ray towards the detector, +x along increasing detector
  column, +y along increasing detector row (OpenCV). The detector plane is
  z = SDD.
* Intrinsics ``K = [[SDD/du, 0, cx], [0, SDD/dv, cy], [0, 0, 1]]`` with du, dv
  the column and row pixel spacing (mm) and (cx, cy) the principal point in
  pixels. Pixel (row r, col c) has its centre at (u=c, v=r); the default
  principal point is ((W-1)/2, (H-1)/2).
* Pose = ``camera_from_world``, a 4x4 rigid matrix; a world point p projects
  to ``K (R p + t)`` in homogeneous pixel coordinates.

All functions take torch tensors with arbitrary leading batch dimensions
(``(..., 4, 4)`` poses, ``(..., 3)`` vectors) and are differentiable, so that
gradients flow from a DRR back to any parameterisation. Angles are radians
unless a name says ``_deg``; lengths are millimetres.

Modules: `detector` (Detector, projection), `rigid` (matrices, SE(3)/SO(3),
quaternions, Euler angles), `motions` (motions about the CT centre, seeded
start poses), `carm` (spherical C-arm model, clinical angles), `files`
(geometry and pose JSON).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".detector": "Detector Number project backproject pixel_grid",
    ".rigid": "make_rigid invert_rigid translation_matrix check_pose skew se3_exp so3_log so3_exp se3_log "
              "quaternion_to_matrix matrix_to_quaternion axis_rotation euler_to_matrix matrix_to_euler",
    ".motions": "about_center motion_about_center motion_about_center_params pose_from_se3_about "
                "se3_about_from_pose random_motions perturb_pose pose_difference orbit_pose",
    ".carm": "spherical_carm_to_pose pose_to_spherical_carm clinical_to_pose pose_to_clinical",
    ".files": "GEOMETRY_KEYS detector_from_dict detector_to_dict read_geometry write_json pose_from_dict read_pose "
              "pose_to_dict",
})
__all__ = sorted(__getattr__.table)
