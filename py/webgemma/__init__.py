"""webgemma runtime: tokenizer, chat template, sampling and the generation engine.

Pure Python + numpy, the same code in Pyodide (browser) and CPython. Nothing here imports the exporter.
"""

__version__ = "0.1.0"
