"""Distillation of the VLM recommender into small students (DLLM2Rec-style): the teacher-signals artifact
(`mmrec.distill.signals`), the `distill:` section of a student (`mmrec.distill.config`) and the importance-aware
ranking loss (`mmrec.distill.loss`). docs/distillation.md says how they fit together."""
