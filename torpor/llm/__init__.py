"""A small CPU runner for Llama-architecture GGUF models (numpy only), for examples and tests.

:mod:`torpor.llm.convert` turns a GGUF file into a folder that loads in milliseconds (float32
weights in one file, memory-mapped; the tokenizer and chat template taken from the GGUF metadata);
:mod:`torpor.llm.llama` runs it.
"""
