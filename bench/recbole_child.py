"""Runs inside RecBole 1.2.1's own virtual environment (made by bench/peer_recbole.py), never in mmrec's.

    python recbole_child.py '{"model": "SASRec", "dataset": ..., "config_files": [...], "config": {...}}'

Trains one RecBole model the way `run_recbole` does, with one change: autograd anomaly detection, which one of
RecBole's model files switches on for every model when the registry is imported, is switched off again before
the model is built (it changes no number, only makes training several times slower). Prints RecBole's logs,
then one line `RESULT {json}` with the test and best-validation metrics, the catalogue size and the CPU seconds.
Only the standard library and RecBole's own dependencies are imported.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    job = json.loads(sys.argv[1])
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole reloads its best checkpoint
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    torch.set_num_threads(int(job.get("threads", 1)))
    config = Config(model=job["model"], dataset=job["dataset"], config_file_list=job["config_files"],
                    config_dict=job["config"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model_class = get_model(config["model"])
    torch.autograd.set_detect_anomaly(False)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    t0 = time.process_time()
    _, best_valid = trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    print("RESULT " + json.dumps({
        "test": {k: float(v) for k, v in result.items()},
        "valid": {k: float(v) for k, v in best_valid.items()},
        "items": int(dataset.item_num - 1),  # minus RecBole's padding id 0
        "test_rows": len(test.dataset) if config["MODEL_TYPE"].name == "SEQUENTIAL" else len(test.uid_list),
        "cpu_s": time.process_time() - t0,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
