"""`mmrec plan`: what every stage of an experiment will need, before anything loads a weight.

Per stage (item summaries, user summaries, finetune and scoring of each `kind: vlm` model): prompt tokens (max and
median, images included, counted with the checkpoint's own tokenizer and its processor's image settings), whether
`max_length` fits the longest image prompt, the GPU memory of one process (`mmrec.plan_memory`) and the host memory
of the scorer's caches; for the finetune, score and distillation-signals stages an estimate of their GPU time from
their FLOPs (`mmrec.plan_time`: the GPU type and utilisation are stated assumptions). Image sizes come from the
dataset's items table (sizes recorded at import, or read from each image file's header; pixels are never decoded);
without a dataset the plan assumes `ASSUMED_SIZES` and says so.
"""
from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mmrec.errors import ConfigError, MmrecError
from mmrec.plan_memory import CONTEXT_MARGIN, Batch, generation, gib, scoring, training
from mmrec.plan_model import ModelShape, Tokens, shape_of
from mmrec.plan_time import (
    Assumptions,
    PromptCost,
    StageTime,
    Users,
    finetune_time,
    hours,
    score_time,
    signals_time,
    users_of,
)

# Image sizes (width, height) assumed without a dataset: a square product photo, a 4:3 photo, a 16:9 video cover.
ASSUMED_SIZES = ((500, 500), (1000, 750), (1280, 720))
ASSUMED_TITLE = "Organic cotton baby sleeping bag with zip, 0-6 months, grey stars"  # 12 words, a typical title
ANSWER_TOKENS = 2  # " Yes"/" No" and end of sequence after a training prompt


@dataclass
class StageBudget:
    """One stage's prompt lengths and memory."""

    stage: str
    model: str
    tokens_max: int
    tokens_median: int
    gpu: dict[str, int]
    host: dict[str, int] = field(default_factory=dict)
    limit_key: str | None = None
    limit: int | None = None
    needs: int | None = None  # the smallest limit that fits the longest image prompt
    notes: list[str] = field(default_factory=list)
    time: StageTime | None = None

    @property
    def fits(self) -> bool:
        return self.limit is None or self.needs is None or self.limit >= self.needs


@dataclass
class Plan:
    source: str
    data: str  # where prompt lengths came from, or what was assumed
    stages: list[StageBudget] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    assumed: Assumptions = field(default_factory=Assumptions)
    users: Users | None = None

    def refusals(self, stages: set[str] | None = None) -> list[str]:
        """One message per length key too small for some stage (of `stages`, default all), with the value that
        fits all its stages."""
        needs: dict[str, tuple[int, int, list[str]]] = {}
        for s in self.stages:
            if not s.fits and (stages is None or s.stage in stages):
                limit, need, stages = needs.get(s.limit_key, (s.limit, 0, []))
                needs[s.limit_key] = (limit, max(need, s.needs), stages + [s.stage])
        return [f"{self.source}: key '{key}' is {limit} but the longest image prompt of {' and '.join(stages)} needs "
                f"{need} tokens (image, title and question are never cut); set {key}={need} or more"
                for key, (limit, need, stages) in needs.items()]

    def check(self, stages: set[str] | None = None) -> None:
        """Refuse a config whose `max_length` cannot hold its longest image prompt (in `stages`, default all)."""
        bad = self.refusals(stages)
        if bad:
            raise ConfigError("; ".join(bad))

    def text(self) -> str:
        lines = [f"plan for {self.source}", f"data: {self.data}"]
        for s in self.stages:
            gpu = sum(s.gpu.values())
            limit = f"{s.limit_key}={s.limit} ({'fits' if s.fits else 'TOO SMALL'}: needs >= {s.needs})" \
                if s.limit_key else "no length limit"
            lines += ["", f"{s.stage}  [{s.model}]",
                      f"  prompt tokens: max {s.tokens_max:,}, median {s.tokens_median:,}; {limit}",
                      f"  GPU per process: {gib(gpu)} (+ ~{gib(CONTEXT_MARGIN)} CUDA context and allocator slack)"]
            lines += [f"    {k:<26} {gib(v)}" for k, v in s.gpu.items()]
            if s.host:
                lines.append(f"  host memory of caches: {gib(sum(s.host.values()))}")
                lines += [f"    {k:<26} {gib(v)}" for k, v in s.host.items()]
            lines += [f"  {s.time.text()}"] if s.time else []
            lines += [f"  note: {n}" for n in s.notes]
        timed = [s.time.seconds for s in self.stages if s.time]
        if timed:
            lines += ["", f"GPU time of the timed stages (estimate): {hours(sum(timed))} on {self.assumed.text()} "
                          f"(--gpu, --mfu); users: {self.users.source}"]
        elif self.stages:
            lines += ["", "GPU time: not estimated (counted for the paper protocol only, from the dataset's users "
                          "or --users N)"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- data -------------------------------------------------------------------------------------------------------
@dataclass
class DataStats:
    """Item titles and image sizes (width, height) the prompts are built from."""

    titles: list[str]
    texts: list[str]  # item descriptions (the fusion template shows them), aligned with titles
    sizes: list[tuple[int, int]]  # one per item with an image
    note: str
    history: int  # longest history a user prompt lists (direct mode)
    dataset_dir: Path | None = None
    users: int | None = None  # users with 2 interactions or more (None without a dataset)


def data_stats(cfg: Any) -> DataStats:
    from mmrec.data.canonical import INTERACTIONS_FILE, ITEMS_FILE, REMAKE

    data = cfg.section("data")
    root = Path(data.path) if data.path else cfg.paths.dataset
    split = cfg.section("split")
    if not (root / ITEMS_FILE).is_file():
        history = split.max_history or (split.top_k - 1 if split.protocol == "paper" else 50)
        sizes = " ".join(f"{w}x{h}" for w, h in ASSUMED_SIZES)
        return DataStats([ASSUMED_TITLE], [""], list(ASSUMED_SIZES), f"{root} not found: ASSUMED image sizes {sizes} "
                         f"(width x height), titles like {ASSUMED_TITLE!r}, histories of {history} items", history)
    import pandas as pd

    from mmrec.io import read_table

    items = read_table(root / ITEMS_FILE, remedy=REMAKE).to_pandas()
    titles, texts = (items[c].fillna("").astype(str).tolist() if c in items else [""] * len(items)
                      for c in ("title", "text"))
    sizes = []
    for row in items.itertuples(index=False):
        if getattr(row, "image", None) is None or (isinstance(row.image, float) and row.image != row.image):
            continue
        w, h = getattr(row, "image_width", None), getattr(row, "image_height", None)
        if w is None or h is None or pd.isna(w) or pd.isna(h) or not w or not h:
            w, h = _header_size(root / str(row.image))
        if w and h:
            sizes.append((int(w), int(h)))
    inter = read_table(root / INTERACTIONS_FILE, ["user_id"], remedy=REMAKE).to_pandas()
    per_user = inter["user_id"].value_counts()
    longest = int(per_user.max()) - 1 if len(inter) else 0
    history = min(longest, split.max_history or longest, split.top_k - 1 if split.protocol == "paper" else longest)
    note = f"{root}: {len(items):,} items, {len(sizes):,} image sizes read"
    return DataStats(titles or [""], texts or [""], sizes, note, max(history, 1), root, int((per_user >= 2).sum()))


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image file's header; Pillow decodes no pixel until asked to."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError):
        return 0, 0


# -- prompts ----------------------------------------------------------------------------------------------------
def _loaded_like(spec: Any, tokens: Tokens, config: Any, vlm: bool) -> Any:
    """What `render_prompt` / `PromptBuilder` read from a loaded model, without the model."""
    processor = tokens.processor if vlm else None
    return SimpleNamespace(spec=spec, tokenizer=tokens.tokenizer, processor=processor,
                           model=SimpleNamespace(config=config),
                           image_token=getattr(processor, "image_token", None) or "<image>")


def filler(tokens: Tokens, n: int) -> str:
    """Text of about `n` tokens: a generated summary or preference of that length (max_new_tokens)."""
    return tokens.text_of(n, "The user appears to have a preference for soft, colourful and practical items. ")


def _stats(values: list[int]) -> tuple[int, int]:
    return (max(values), int(statistics.median(values))) if values else (0, 0)


@dataclass
class _Model:
    spec: Any
    shape: ModelShape
    tokens: Tokens
    loaded: Any


def _model(spec: Any, vlm: bool, where: str) -> _Model:
    from mmrec.plan_model import load_config, shipped_id

    shape = shape_of(spec, vlm, where)
    tokens = _tokens(shape.folder, shape.is_vlm, shipped_id(spec))
    tokens.where = where
    return _Model(spec, shape, tokens, _loaded_like(spec, tokens, load_config(shape.folder), shape.is_vlm))


@functools.lru_cache(maxsize=16)
def _tokens(folder: Path, is_vlm: bool, hub_id: str | None) -> Tokens:
    """One tokenizer/processor per checkpoint and process (planning many configs loads each once)."""
    return Tokens(folder, is_vlm, str(folder), hub_id=hub_id)


def _approx(m: _Model) -> list[str]:
    m.tokens.tokenizer  # noqa: B018 (building it sets `stand_in`)
    if not m.tokens.stand_in:
        return []
    return [f"text tokens counted with a same-kind stand-in vocabulary ({m.spec.name_or_path}'s is not shipped; "
            "give a local folder with its tokenizer for exact counts); image tokens are exact"]


def _image_tokens(m: _Model, sizes: list[tuple[int, int]]) -> list[int]:
    return [m.tokens.image(w, h) for w, h in sizes]


def _largest(m: _Model, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The size whose image takes the most tokens (ties: the most crops)."""
    return max(set(sizes), key=lambda s: (m.tokens.image(*s), m.tokens.tiles(*s)))


def item_stage(cfg: Any, data: DataStats) -> StageBudget:
    from mmrec.summarize.templates import item_template
    from mmrec.vlm.templates import render_prompt

    sec = cfg.section("item_summaries")
    m = _model(sec.model, True, f"{cfg.source}: item_summaries.model")
    template = item_template(sec.template)
    texts = [template.format(title=t, text=x[: sec.max_text_chars], item_id="")
             for t, x in zip(data.titles, data.texts)]
    rendered = render_prompt(m.loaded, texts[0], image=True)
    overhead = m.tokens.count(rendered, special=True) - m.tokens.count(texts[0]) - 1  # chat markup; the image below
    text_tokens = [n + overhead for n in m.tokens.counts(texts)]
    images = _image_tokens(m, data.sizes) or [0]
    top, median = max(text_tokens) + max(images), int(statistics.median(text_tokens)) + int(statistics.median(images))
    big = _largest(m, data.sizes) if data.sizes else (0, 0)
    gpu = generation(sec.model, m.shape, Batch(sec.batch_size, top, m.tokens.tiles(*big) if data.sizes else 0),
                     sec.max_new_tokens)
    return StageBudget("summarize-items", sec.model.name_or_path, top, median, gpu,
                       notes=_context_note(m.shape, top + sec.max_new_tokens, "item_summaries") + _approx(m))


def _context_note(shape: ModelShape, total: int, section: str) -> list[str]:
    from mmrec.plan_model import load_config

    config = load_config(shape.folder)
    limit = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None)
    if limit and total > limit:
        return [f"prompt + {section}.max_new_tokens = {total} tokens exceeds the model's {limit} positions"]
    return []


def user_stage(cfg: Any, data: DataStats) -> StageBudget:
    from mmrec.summarize.users import Prompter
    from mmrec.vlm.templates import render_prompt

    sec = cfg.section("user_summaries")
    m = _model(sec.model, False, f"{cfg.source}: user_summaries.model")
    item_new = cfg.section("item_summaries").max_new_tokens if cfg.has("item_summaries") else 0
    summary = filler(m.tokens, item_new) if sec.use_image_summaries and item_new else ""
    previous = filler(m.tokens, sec.max_new_tokens)
    k = data.history if sec.mode == "direct" else sec.block_size
    counts = []
    for title in _title_extremes(m, data.titles):
        block = [f"i{i}" for i in range(k)]
        prompter = Prompter(sec, {b: title for b in block}, {b: "" for b in block}, {b: summary for b in block})
        text, _ = prompter.step("u", block, None if sec.mode == "direct" else previous)
        counts.append(m.tokens.count(render_prompt(m.loaded, text, image=False), special=True))
    top, median = max(counts), counts[-1]
    gpu = generation(sec.model, m.shape, Batch(sec.batch_size, top), sec.max_new_tokens)
    notes = [(f"{k} items per prompt, each with a {item_new}-token image summary; previous preference "
              f"{sec.max_new_tokens} tokens")] + _context_note(m.shape, top + sec.max_new_tokens, "user_summaries")
    return StageBudget("summarize-users", sec.model.name_or_path, top, median, gpu, notes=notes + _approx(m))


def _title_extremes(m: _Model, titles: list[str]) -> list[str]:
    """[longest title, median title] by token count."""
    lengths = m.tokens.counts(titles)
    order = sorted(range(len(titles)), key=lambda i: lengths[i])
    return [titles[order[-1]], titles[order[len(order) // 2]]]


def vlm_stages(cfg: Any, name: str, data: DataStats, population: Users | None = None,
               assumed: Assumptions = Assumptions()) -> tuple[list[StageBudget], PromptCost]:
    """finetune:<name> (when trained) and score:<name>, and the cost of one of the model's prompts."""
    from mmrec.models import vlm_scorer
    from mmrec.models.vlm_prompt import PromptBuilder

    mcfg = cfg.model(name)
    key = f"models.{name}"
    m = _model(mcfg.model, True, f"{cfg.source}: {key}.model")
    tcfg = mcfg.train
    # train.max_length: None (where the config allows it) means the language model's context length
    max_length = tcfg.max_length or m.shape.context or 2**31
    builder = PromptBuilder(m.loaded, 0, 0, use_image=mcfg.use_image, order=mcfg.prompt_order,
                            max_length=max_length)
    pref = _preference(cfg, mcfg, m, data)
    prefix_text, suffix_text = builder.texts(pref, "")
    prefix = m.tokens.count(prefix_text, special=True)
    base = m.tokens.count(suffix_text) - (1 if mcfg.use_image else 0)
    titles = m.tokens.counts(data.titles)
    images = _image_tokens(m, data.sizes) if mcfg.use_image else [0]
    images = images or [0]
    suffix_max = base + max(titles) + max(images)
    suffix_median = base + int(statistics.median(titles)) + int(statistics.median(images))
    big = _largest(m, data.sizes) if mcfg.use_image and data.sizes else (0, 0)
    tiles = m.tokens.tiles(*big) if mcfg.use_image and data.sizes else 0
    limit_key = f"{key}.train.max_length"
    # the image, title and question are never cut, the answer always has room, and at least one prefix token stays
    need = suffix_max + ANSWER_TOKENS + 1
    split = cfg.section("split")
    cached = mcfg.prefix_cacheable and m.shape.model_type in vlm_scorer.CACHE_FAMILIES
    kept_prefix = max(1, min(prefix, max_length - suffix_max - ANSWER_TOKENS))
    patches = 0
    if mcfg.use_image and data.sizes:
        per_size = {s: m.tokens.tiles(*s) for s in set(data.sizes)}
        patches = int(statistics.median([per_size[s] for s in data.sizes])) * m.shape.vision["tokens"]
    cost = PromptCost.of(m.shape, kept_prefix, suffix_median, patches, cached)
    out = []
    host = _host(mcfg)
    if mcfg.finetune:
        rows = min(max_length, prefix + suffix_max + ANSWER_TOKENS)
        gpu = training(mcfg.model, m.shape, mcfg.lora, tcfg, mcfg.loss, Batch(tcfg.batch_size, rows, tiles))
        notes = [(f"LoRA r={mcfg.lora.r} on {len(m.shape.lora_targets(mcfg.lora.targets))} layers: "
                  f"{m.shape.lora_params(mcfg.lora.targets, mcfg.lora.r):,} trainable parameters; micro-batch "
                  f"{tcfg.batch_size} x {rows} tokens, gradient accumulation {tcfg.grad_accum} (no extra memory), "
                  f"gradient checkpointing {'on' if tcfg.gradient_checkpointing else 'off'}")]
        if mcfg.model.quantization:
            notes.append("QLoRA: peft casts every non-quantized weight (embeddings, lm_head, vision tower) to float32")
        out.append(StageBudget(f"finetune:{name}", mcfg.model.name_or_path, prefix + suffix_max + ANSWER_TOKENS,
                               prefix + suffix_median + ANSWER_TOKENS, gpu,
                               host if hasattr(mcfg.score, "cache_mb") else  # one cache shared with validation
                               {k + " (x2: train + valid)": 2 * v for k, v in host.items()},
                               limit_key, max_length, need, notes + _approx(m),
                               finetune_time(cost, population, cfg, tcfg, assumed) if population else None))
    batch = mcfg.score.batch_size
    users = max(1, batch // (split.negatives + 1)) if cached else 1
    gpu = scoring(mcfg.model, m.shape, users, Batch(batch, suffix_max, tiles), kept_prefix, cached)
    note = (f"prefix cache on: {users} user prefix(es) of {kept_prefix} tokens per batch of {batch} candidates"
            if cached else f"plain forwards of {batch} whole prompts (prefix cache off)")
    out.append(StageBudget(f"score:{name}", mcfg.model.name_or_path, prefix + suffix_max, prefix + suffix_median,
                           gpu, host, limit_key, max_length, need, [note] + _approx(m),
                           score_time(cost, population, cfg, assumed) if population else None))
    return out, cost


def signal_stages(cfg: Any, score_stages: dict[str, StageBudget], costs: dict[str, PromptCost], data: DataStats,
                  users: Users | None, assumed: Assumptions) -> list[StageBudget]:
    """signals:<student> of every distilled student whose teacher was planned: the teacher's scorer (its score
    stage's memory), timed by the pairs it scores. Students with the same teacher run and signal settings share
    one table (the cache is keyed by teacher, preference and item), so only the first is counted."""
    import dataclasses

    from mmrec.distill.signals import distill_section

    out, seen = [], {}
    for name in cfg.model_names():
        if getattr(cfg.model(name), "distill", None) is None:
            continue
        dcfg = distill_section(cfg, name)
        if dcfg.teacher not in score_stages:
            continue
        key = (dcfg.teacher, dcfg.teacher_run, tuple(sorted(dcfg.signal_settings().items())))
        stage = dataclasses.replace(score_stages[dcfg.teacher], stage=f"signals:{name}", host={}, time=None,
                                    notes=[f"teacher {dcfg.teacher}: the memory of score:{dcfg.teacher}"])
        if key in seen:
            stage.notes.append(f"the same teacher and signal settings as {seen[key]}: its cached teacher scores "
                               "are reused (no forward counted here)")
        elif users:
            items = len(data.titles) if data.dataset_dir is not None else None
            stage.time = signals_time(costs[dcfg.teacher], users, dcfg, cfg.section("split").top_k, items, assumed)
        seen.setdefault(key, stage.stage)
        out.append(stage)
    return out


def _preference(cfg: Any, mcfg: Any, m: _Model, data: DataStats) -> str:
    """The longest preference text a prompt shows: a full-length generated preference, or the history listing."""
    if mcfg.preference_source == "history":
        item_new = cfg.section("item_summaries").max_new_tokens if cfg.has("item_summaries") else 0
        title = _title_extremes(m, data.titles)[0]
        line = f"- {title}: {filler(m.tokens, item_new)}"
        return "the user recently interacted with these items:\n" + "\n".join([line] * mcfg.history_items)
    new = cfg.section("user_summaries").max_new_tokens if cfg.has("user_summaries") else 256
    return filler(m.tokens, new)


def _host(mcfg: Any) -> dict[str, int]:
    """Host bytes of one scorer's caches at their bounds: encoded items and prefixes share `score.cache_mb`, decoded
    images the context's image cache."""
    from mmrec.models import vlm_context

    out = {"encoded items + prefixes (score.cache_mb)": int(mcfg.score.cache_mb * 2**20)}
    if mcfg.use_image:
        out["decoded images"] = int(vlm_context.IMAGE_CACHE_MB * 2**20)
    return out


# -- the plan ---------------------------------------------------------------------------------------------------
def make_plan(cfg: Any, strict: bool = True, assumed: Assumptions = Assumptions()) -> Plan:
    """The budget of every stage of `cfg`. `strict=False` (under `mmrec run`): a model the plan cannot find
    offline is noted and skipped instead of refused, since the run itself may download it. `assumed`: the GPU,
    utilisation and (without a dataset) user count of the time estimates."""
    data = data_stats(cfg)
    users = users_of(cfg, data.users, assumed)
    plan = Plan(cfg.source, data.note, assumed=assumed, users=users)
    costs: dict[str, PromptCost] = {}

    def vlm(name: str) -> list[StageBudget]:
        stages, costs[name] = vlm_stages(cfg, name, data, users, assumed)
        return stages

    jobs: list[tuple[str, Any]] = []
    if cfg.has("item_summaries"):
        jobs.append(("item_summaries.model", lambda: [item_stage(cfg, data)]))
    if cfg.has("user_summaries"):
        jobs.append(("user_summaries.model", lambda: [user_stage(cfg, data)]))
    for name in cfg.model_names():
        if cfg.model(name).kind == "vlm":
            jobs.append((f"models.{name}.model", lambda n=name: vlm(n)))
    for key, job in jobs:
        try:
            plan.stages += job()
        except MmrecError as e:
            if strict:
                raise
            plan.notes.append(f"{key}: not planned: {e}")
    score_stages = {s.stage.split(":", 1)[1]: s for s in plan.stages if s.stage.startswith("score:")}
    plan.stages += signal_stages(cfg, score_stages, costs, data, users, assumed)
    if not jobs:
        plan.notes.append("no VLM or LLM stage in this config: nothing to budget")
    return plan
