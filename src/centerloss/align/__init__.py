"""Face detection (MTCNN, plain PyTorch) and 5-point similarity alignment to the paper's 112x96 crops.

Public API::

    from centerloss.align import detect_faces, align, align_file, align_tree

    faces = detect_faces(rgb)               # .boxes (N, 4), .scores (N,), .points (N, 5, 2), by score
    crop = align(rgb, faces.points[0])      # (112, 96, 3) uint8 on the paper's template
    res = align_file("img.jpg", mode="test")  # decode + detect + choose + align (+ fallback); res.crop
    align_tree("raw/", "aligned/", mode="train")  # the `centerloss align` command

Points are (x, y) in source pixels (pixel-centre coordinates), ordered left eye, right eye, nose, left
mouth corner, right mouth corner, where left = smaller x in the image. The face-choice and fallback rules
are in :mod:`centerloss.align.policy`.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

# Lazy attributes (PEP 562): `centerloss align --help` imports this package, and must not pay for torch/cv2.
_WHERE = {
    "MTCNN": "mtcnn", "Faces": "mtcnn",
    "AlignResult": "pipeline", "align_file": "pipeline", "align_rgb": "pipeline", "detect_faces": "pipeline",
    "get_detector": "pipeline",
    "choose_face": "policy", "default_points": "policy", "read_landmarks_csv": "policy",
    "MANIFEST_COLUMNS": "runner", "align_tree": "runner",
    "TEMPLATE_112x96": "transform", "align": "transform", "similarity_transform": "transform",
    "template": "transform", "warp": "transform",
    "contact_sheet": "contact_sheet",
    "escape_name": "files", "scan_tree": "files", "unescape_name": "files",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
