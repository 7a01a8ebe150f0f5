"""Face tools: raw photos in, answers out (verify, embed, gallery, identify, ONNX export)."""
