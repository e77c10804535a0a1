"""MLLM-MSR stage 1: item summaries (VLM) and recurrent user preferences (LLM), with the generation cache."""
