"""webgemma exporter: Gemma 4 E2B/E4B Hugging Face checkpoint → quantized, sharded ONNX model folder.

CPython only (onnx, numpy). Reads the checkpoint one tensor at a time; never imports torch.
"""
