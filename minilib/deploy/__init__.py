"""Deployment: the real MiniLM and the Hugging Face bridges, ONNX export, serving."""
