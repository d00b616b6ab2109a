"""The hand model: 26-DOF kinematic skeleton, 41 spheres, skinned mesh, pose sampler, renders and viewer.

``HandModel`` gives keypoints and the mesh; ``sample_poses``/``sample_shapes`` are the joint-angle pose
sampler and the shape sampler (not the pose prior (VAE) of ``train.prior``); :mod:`hand.render` renders
mesh and sphere depth in the crop frame; ``python -m hand.viewer`` is the interactive viewer;
:func:`hand.fit.fit_joints` fits pose and shape to labelled joints (arrays; ``python -m shards fit-poses``
fits a data set's labels). Frames and sphere layout: :mod:`hand.anatomy`.
"""

from hand.anatomy import FINGERS, NUM_PARAMS, NUM_SPHERES, NYU_JOINT_NAMES, PALM_CENTER, PARAM_NAMES, SPHERE_NAMES
from hand.model import SHAPE_DIM, HandModel, axis_angle_to_matrix
from hand.sampler import mean_flexion, sample_poses, sample_poses_from_bank, sample_shapes
from hand.skin import winding_number

__all__ = [
    "FINGERS", "NUM_PARAMS", "NUM_SPHERES", "NYU_JOINT_NAMES", "PALM_CENTER", "PARAM_NAMES",
    "SPHERE_NAMES", "SHAPE_DIM", "HandModel", "axis_angle_to_matrix", "mean_flexion", "sample_poses",
    "sample_poses_from_bank", "sample_shapes", "winding_number",
]
