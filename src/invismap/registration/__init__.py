"""Color/thermal registration (paper Section 3.1) and residual-misalignment statistics (Section 4.4).

* :mod:`.calibration`: checkerboard corners (thermal: inverted + CLAHE), intrinsics, distortion, the
  color-to-thermal homography, calibration YAML.
* :mod:`.warp`: undistortion + homography for images, points and boxes; plain shifts.
* :mod:`.pairing`: pairing frames by name or timestamp.
* :mod:`.displacement`: dense flow on edge images, trusted-pixel masks, statistics, global shifts.
* :mod:`.synthetic`: a rendered checkerboard rig with known geometry; known random misalignment.
* :mod:`.experiment`: the weak-alignment benchmark (reusable for AlignGAN).
* :mod:`.run`: file-level stage functions behind ``invismap calibrate | register | displacement``.

Example:
    >>> from invismap.registration import dense_displacement, displacement_stats  # doctest: +SKIP
"""

from invismap.registration.calibration import (
                                               CameraModel,
                                               RigCalibration,
                                               calibrate_rig,
                                               find_board_corners,
                                               load_calibration,
                                               plane_homography,
                                               save_calibration,
)
from invismap.registration.displacement import (
                                               DisplacementParams,
                                               dense_displacement,
                                               displacement_stats,
                                               edge_image,
                                               estimate_translation,
                                               fit_homography_to_flow,
)
from invismap.registration.warp import (
                                               offset_correction,
                                               translation_homography,
                                               undistort_thermal,
                                               warp_color_to_thermal,
                                               warp_image,
)

__all__ = [
                                               "CameraModel",
                                               "DisplacementParams",
                                               "RigCalibration",
                                               "calibrate_rig",
                                               "dense_displacement",
                                               "displacement_stats",
                                               "edge_image",
                                               "estimate_translation",
                                               "find_board_corners",
                                               "fit_homography_to_flow",
                                               "load_calibration",
                                               "offset_correction",
                                               "plane_homography",
                                               "save_calibration",
                                               "translation_homography",
                                               "undistort_thermal",
                                               "warp_color_to_thermal",
                                               "warp_image",
]
