"""LoRA / QLoRA on a loaded VLM, and merging a trained adapter back into full weights.

LoRA goes on the language model's linear layers (the `lora.targets` regex; the vision tower has layers with the
same names, hence a regex rather than bare names). The vision tower and the projector stay frozen unless
`train_vision` / `train_projector`, in which case peft trains and saves a full copy of them with the adapter.
`prepare_model_for_kbit_training` runs only for a quantized (QLoRA) base: on a full-precision model it would
up-cast every weight to fp32 for nothing (the reference code's mistake).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrec.errors import ConfigError


def _module_names(model: Any, fragment: str) -> list[str]:
    """Names of the top-most submodules whose last name part is `fragment` (e.g. the vision tower)."""
    names = [n for n, _ in model.named_modules() if n.split(".")[-1] == fragment]
    return [n for n in names if not any(n != o and n.startswith(o + ".") for o in names)]


def apply_lora(model: Any, lora: Any, quantized: bool, gradient_checkpointing: bool) -> Any:
    """The peft model to train; its trainable parameters are the LoRA matrices (and opted-in modules)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    save = []
    for wanted, fragment in ((lora.train_vision, "vision_tower"), (lora.train_projector, "multi_modal_projector")):
        if wanted:
            found = _module_names(model, fragment)
            if not found:
                raise ConfigError(f"lora.train_{fragment.split('_')[0]}: the model has no '{fragment}' module")
            save.append(fragment)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets,
                        init_lora_weights="gaussian" if lora.init == "gaussian" else True, bias="none",
                        modules_to_save=save or None)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"lora.targets {lora.targets!r} matches no layer of the model: {e}".splitlines()[0]) from None
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ConfigError("LoRA left no trainable parameter; check lora.targets")
    return peft_model


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable tensors (LoRA matrices, opted-in modules) by parameter name, on the CPU."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, tensors: dict[str, Any]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]}); "
                          "it was written with other LoRA settings: re-run with --no-resume")
    for name, value in tensors.items():
        params[name].data.copy_(value.to(params[name].device, params[name].dtype))


def merge_adapter(spec: Any, adapter_dir: Path, out_dir: Path) -> Path:
    """Base weights (loaded unquantized) + LoRA merged, saved with the processor as a plain checkpoint."""
    import dataclasses

    from peft import PeftModel

    from mmrec.io import atomic_dir
    from mmrec.vlm import load_vlm

    loaded = load_vlm(dataclasses.replace(spec, quantization=None))
    merged = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.processor.save_pretrained(tmp)
    return out_dir
