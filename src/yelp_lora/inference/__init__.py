"""Prediction: a loaded adapter (torch or ONNX Runtime) and batch jobs over files."""
