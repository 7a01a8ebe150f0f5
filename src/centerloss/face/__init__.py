"""Face tools: raw photos in, answers out (verify, embed, gallery, identify, ONNX export).

Public API::

    from centerloss.face import FaceRecognizer, Gallery

    rec = FaceRecognizer("model.safetensors")             # or "model.onnx" (onnxruntime)
    faces = rec.detect("photo.jpg")                       # [Face(box (4,), score, points (5, 2)), ...]
    crop = rec.align("photo.jpg")                         # (112, 96, 3) uint8, the policy's face
    feats = rec.embed(["a.jpg", "b.jpg"])                 # (2, 2 * embed_dim) float32: crop + flip, concat
    score = rec.compare("a.jpg", "b.jpg")                 # cosine similarity
    g = Gallery.build("people.gallery", rec, "people/")   # people/NAME/*.jpg
    rec.identify("who.jpg", g, top_k=5).best              # a name, or "unknown" below the threshold

Nothing heavy (torch, cv2, onnxruntime) is imported until a class is used.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_WHERE = {
    "FaceRecognizer": "recognizer", "Identification": "recognizer", "l2_normalize": "recognizer",
    "Gallery": "gallery", "Enrollment": "gallery", "enroll": "gallery", "people_in": "gallery",
    "templates_of": "gallery",
    "Face": "photos", "PhotoRecord": "photos", "write_manifest": "photos",
    "embed_folder": "folder",
    "load_embedder": "models", "TorchEmbedder": "models",
    "OnnxEmbedder": "onnx_model", "export_onnx": "onnx_model",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
