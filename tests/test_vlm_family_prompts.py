"""Every prompt mmrec writes, rendered through its own prompt paths with each supported family's published chat
template and tokenizer: item summaries, recurrent and direct preference updates, the recommendation prompt of
MLLM-MSR and of the baselines (TALLRec, Rec-GPT4V, zero-shot); the Yes/No ids as they follow those prompts."""
from __future__ import annotations

from mmrec.summarize.generation import GenerationSettings, TextGenerator
from mmrec.vlm import render_prompt

LLAMA3 = "meta-llama/Meta-Llama-3-8B-Instruct"


def test_llama3_prompt_holds_the_text_not_a_python_list(family_loaded):
    """Llama-3's template does `message['content'] | trim`: given content parts it prints the Python list (with
    escaped newlines) instead of raising, so the text-only fallback never ran and every prompt was garbled."""
    loaded = family_loaded(LLAMA3)
    text = "Here is a list of items:\n1. \"A red lamp\"\nSummarize the user's preferences."
    prompt = TextGenerator(lambda: loaded, GenerationSettings()).prompt(text, image=False)
    assert "[{" not in prompt and "'type'" not in prompt
    assert prompt == ("<|start_header_id|>user<|end_header_id|>\n\n" + text + "<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_prompt(loaded, text, image=False) == prompt


# --- every prompt of every stage, with each family's real template -------------------------------------------

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mmrec.models.vlm_build import make_builder  # noqa: E402
from mmrec.models.vlm_rec import VARIANTS  # noqa: E402
from mmrec.summarize.templates import FUSION_TEXT_ONLY, ITEM_TEMPLATES  # noqa: E402
from mmrec.summarize.users import Prompter, UserSummaryConfig  # noqa: E402
from mmrec.vlm import ModelSpec, families  # noqa: E402

VLMS = [h for h in families.SUPPORTED if families.is_vlm(h)]
LLMS = [h for h in families.SUPPORTED if not families.is_vlm(h)]
# What each family's template puts right before the model's answer.
ASSISTANT_TAIL = {
    LLAMA3: "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistralai/Mistral-7B-Instruct-v0.2": "[/INST]",
    "Qwen/Qwen2.5-7B-Instruct": "<|im_start|>assistant\n",
    "llava-hf/llava-1.5-7b-hf": "ASSISTANT:",
    "llava-hf/llava-v1.6-mistral-7b-hf": "[/INST]",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "<|im_start|>assistant\n",
}
# (Yes, No) ids measured on the real vocabularies after the real templates (None: the stand-in tokenizers).
YES_NO = {"llava-hf/llava-v1.6-mistral-7b-hf": (5592, 1770), "llava-hf/llava-onevision-qwen2-7b-ov-hf": (9454, 2753)}
TITLES = {"i1": "A red lamp", "i2": "Blue mug \"classic\"", "i3": "Wool scarf", "i4": "Desk"}
SUMMARIES = {"i1": "A red metal lamp on a desk.\nWarm light.", "i2": "A blue ceramic mug.", "i3": "A grey scarf."}


def _well_formed(prompt: str, loaded, text: str, hub_id: str) -> None:
    assert text.strip() in prompt, "the template lost or changed the prompt text"
    assert "[{" not in prompt and "'type'" not in prompt
    assert prompt.rstrip(" ").endswith(ASSISTANT_TAIL[hub_id].rstrip(" "))
    bos = loaded.tokenizer.bos_token
    assert not (bos and prompt.startswith(bos)), "BOS is the tokenizer's to add"


@pytest.mark.parametrize("hub_id", LLMS)
def test_user_preference_prompts(family_loaded, hub_id):
    """Recurrent (first block, then an update with the previous preference) and direct prompts of
    `summarize-users`, through Prompter and TextGenerator."""
    loaded = family_loaded(hub_id)
    gen = TextGenerator(lambda: loaded, GenerationSettings())
    for mode in ("recurrent", "direct"):
        cfg = UserSummaryConfig(model=ModelSpec(name_or_path=hub_id), mode=mode)
        prompter = Prompter(cfg, TITLES, {}, SUMMARIES)
        steps = [prompter.step("u1", ["i1", "i2", "i3"], None)]
        if mode == "recurrent":
            steps.append(prompter.step("u1", ["i4"], "The user likes warm colours."))
        for text, _ in steps:
            prompt = gen.prompt(text, image=False)
            _well_formed(prompt, loaded, text, hub_id)
            assert "A red metal lamp on a desk.\nWarm light." in prompt or mode == "recurrent" and "Desk" in prompt
        assert len(loaded.tokenizer(prompt)["input_ids"]) < 400


@pytest.mark.parametrize("hub_id", VLMS)
def test_item_summary_prompts_and_their_image_tokens(family_loaded, hub_id):
    """Every built-in item template of `summarize-items` (and the text-only fusion fallback), rendered by
    TextGenerator and processed with an image as `generate` does: the image expands to the count
    `image_token_count` gives for the real settings."""
    loaded = family_loaded(hub_id)
    gen = TextGenerator(lambda: loaded, GenerationSettings())
    image = Image.new("RGB", (1000, 750), (30, 120, 200))
    expected = families.image_token_count(hub_id, 1000, 750)
    image_id = loaded.tokenizer.convert_tokens_to_ids(loaded.image_token)
    for name, template in ITEM_TEMPLATES.items():
        text = template.format(title="A red lamp", text="Metal, 40 cm.", item_id="i1")
        prompt = gen.prompt(text, image=True)
        _well_formed(prompt, loaded, text, hub_id)
        assert prompt.count(loaded.image_token) == 1
        ids = loaded.processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
        assert int((ids == image_id).sum()) == expected, name
    text = FUSION_TEXT_ONLY.format(title="A red lamp", text="Metal, 40 cm.")
    prompt = gen.prompt(text, image=False)
    _well_formed(prompt, loaded, text, hub_id)
    assert loaded.image_token not in prompt


@pytest.mark.parametrize("hub_id", VLMS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_recommendation_prompts_and_yes_no_ids(family_loaded, hub_id, variant):
    """The Yes/No prompt of MLLM-MSR and the baselines (TALLRec without image, Rec-GPT4V with the history as
    preference, zero-shot), in both orders, through make_builder and PromptBuilder: the text survives the real
    template, the image appears once and expands to the real count, and the answer ids are the single tokens
    that decode to Yes / No after this prompt (the real ids where the vocabulary is real)."""
    use_image = VARIANTS[variant][0]
    loaded = family_loaded(hub_id)
    preference = ("the user recently interacted with these items:\n- A red lamp: A red metal lamp.\n- Blue mug"
                  if variant == "recgpt4v" else "The user appears to have a preference for warm, red items.")
    image = Image.new("RGB", (500, 500), (200, 30, 30))
    for order in ("preference_first", "image_first"):
        builder = make_builder(loaded, use_image, order, max_length=16384)
        prefix, suffix = builder.texts(preference, "Wool scarf")
        whole = prefix + suffix
        _well_formed(whole, loaded, "Wool scarf", hub_id)
        assert preference.splitlines()[-1] in whole and "Answer with only Yes or No." in whole
        assert whole.count(loaded.image_token) == (1 if use_image else 0)
        tok = loaded.tokenizer
        assert tok.decode([builder.yes_id]).strip() == "Yes" and tok.decode([builder.no_id]).strip() == "No"
        if hub_id in YES_NO:
            assert (builder.yes_id, builder.no_id) == YES_NO[hub_id]
        ids = builder.encode_prefix(prefix) + builder.encode_suffix(suffix, image if use_image else None).ids
        image_tokens = ids.count(tok.convert_tokens_to_ids(loaded.image_token))
        assert image_tokens == (families.image_token_count(hub_id, 500, 500) if use_image else 0)
        assert ids.count(tok.bos_token_id) == (1 if tok.bos_token_id is not None else 0)


def test_mistral_prompts_tokenize_as_mistrals_reference_encoder(family_loaded):
    """Mistral's own reference implementation (mistral-common's v1 instruct tokenizer, the one Mistral-7B-Instruct
    v0.1/v0.2 were trained with) encodes the same user turns to the same ids as mmrec's path: the published chat
    template rendered by render_prompt, then the tokenizer as `generate` calls it."""
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    reference = MistralTokenizer.v1()
    hub_id = "mistralai/Mistral-7B-Instruct-v0.2"
    loaded = family_loaded(hub_id)
    gen = TextGenerator(lambda: loaded, GenerationSettings())
    cfg = UserSummaryConfig(model=ModelSpec(name_or_path=hub_id))
    prompter = Prompter(cfg, TITLES, {}, SUMMARIES)
    for block, previous in ((["i1", "i2"], None), (["i3", "i4"], "The user likes warm, red items.")):
        text, _ = prompter.step("u1", block, previous)
        ours = loaded.tokenizer([gen.prompt(text, image=False)])["input_ids"][0]
        theirs = reference.encode_chat_completion(ChatCompletionRequest(messages=[UserMessage(content=text)])).tokens
        assert ours == theirs
