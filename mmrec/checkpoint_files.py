"""The files a training run's checkpoint directory (`ExperimentPaths.checkpoint(run)`) holds whatever the model's
kind, named once for the recipes that write them and the scorers and report that read them. Each kind's own
files (weights, catalogue, adapter) are named beside its model in `mmrec/models/`; a VLM run keeps its record in
`mmrec.models.vlm_build.RUN_FILE` instead."""

RUN_FILE = "run.json"  # the run's record: config, fingerprint, best epoch and score, finished flag
TRAIN_LOG_FILE = "train_log.jsonl"  # one JSON line per epoch (epoch recipes) or logging step (VLM LoRA)
