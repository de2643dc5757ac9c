"""Fine-tuning the local model to re-rank (`kairos train --model llm`): LoRA adapters
(peft) trained on the event log.

One example per user (up to `examples`): their sequence up to their latest event is the
history, that event's item the answer, and the other candidates are what Kairos serves
that user now (the served list, without the item: the hard negatives a re-ranker sees);
the answer is placed at a random letter, so no letter is learned as a habit. The loss is
the cross-entropy of the answer's letter among the letters at the answer position —
exactly what rerank.py scores. A fifth of the examples (at most 100) are held out: the
letter accuracy on them before and after is what `finetune.json` reports.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kairos.llm.prompt import LETTERS, Step, rerank_prompt, steps_of
from kairos.progress import progress
from kairos.threads import torch_threads

if TYPE_CHECKING:
    from kairos.engine import Engine
    from kairos.llm.local import LocalModel


@dataclass
class FinetuneConfig:
    examples: int = 600
    candidates: int = 20
    epochs: int = 1
    lr: float = 3e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    batch: int = 4
    threads: int = 2
    seed: int = 0


@dataclass
class Example:
    history: list[Step]
    titles: list[str]
    answer: int  # index into titles


def examples_from(engine: Engine, config: FinetuneConfig) -> list[Example]:
    """Examples from the engine's users (see the module docstring), seeded."""
    rng = np.random.default_rng(config.seed)
    titles, ids = engine.catalog.titles, engine.catalog.ids
    with engine.lock:
        users = sorted(u for u, state in engine.state.users.items() if len(state.recent) >= 2)
    rng.shuffle(users)
    out: list[Example] = []
    for user_id in users:
        if len(out) >= config.examples:
            break
        with engine.lock:
            steps = list(engine.state.users[user_id].recent)
        target, now = steps[-1], steps[-1].timestamp
        served = engine.recommend(user_id, config.candidates + 5, apply_rules=False)
        negatives = [engine.catalog.index[i.item_id] for i in served.items
                     if engine.catalog.index[i.item_id] != target.item][: config.candidates - 1]
        if len(negatives) < config.candidates - 1:
            continue
        at = int(rng.integers(0, config.candidates))
        chosen = negatives[:at] + [target.item] + negatives[at:]
        history = steps_of(steps[:-1], titles, ids, now)
        out.append(Example(history, [titles[i] or ids[i] for i in chosen], at))
    return out


def finetune(model: LocalModel, examples: list[Example], config: FinetuneConfig, quiet: bool = False
             ) -> tuple[Any, dict[str, Any]]:
    """Train LoRA adapters on `model` in place; (the peft model, a report)."""
    import torch
    from peft import LoraConfig, get_peft_model

    if len(examples) < 10:
        raise ValueError(f"{len(examples)} examples; fine-tuning needs at least 10")
    held = max(5, min(100, len(examples) // 5))
    test, train = examples[:held], examples[held:]
    torch.manual_seed(config.seed)
    letters = list(LETTERS[: config.candidates])
    before = _accuracy(model, test, letters)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; not ours to answer
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        peft_model = get_peft_model(model.model, LoraConfig(
            r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.model = peft_model
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr)
    letter_ids = torch.tensor([model.letter_id(x) for x in letters])
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    losses: list[float] = []
    steps = config.epochs * ((len(train) + config.batch - 1) // config.batch)
    peft_model.train()
    with warnings.catch_warnings(), torch_threads(config.threads), \
            progress("fine-tuning the language model", steps, quiet=quiet) as advance:
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        for _ in range(config.epochs):
            order = rng.permutation(len(train))
            for start in range(0, len(order), config.batch):
                chunk = [train[i] for i in order[start:start + config.batch]]
                batch = model.tokenizer([model.chat_text(rerank_prompt(e.history, e.titles)) for e in chunk],
                                        return_tensors="pt", padding=True, add_special_tokens=False)
                logits = peft_model(**batch).logits[:, -1, :][:, letter_ids]
                loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([e.answer for e in chunk]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                advance(1)
    peft_model.eval()
    after = _accuracy(model, test, letters)
    report = {"config": asdict(config), "train_examples": len(train), "held_out_examples": len(test),
              "held_out_letter_accuracy_before": before, "held_out_letter_accuracy_after": after,
              "chance": 1.0 / config.candidates, "loss_first": float(np.mean(losses[:10])),
              "loss_last": float(np.mean(losses[-10:])), "seconds": round(time.perf_counter() - started, 1),
              "base_model": model.name}
    return peft_model, report


def _accuracy(model: LocalModel, examples: list[Example], letters: list[str]) -> float:
    hits = 0
    for e in examples:
        logp = model.letter_logprobs([rerank_prompt(e.history, e.titles)], letters)[0]
        hits += int(np.argmax(logp) == e.answer)
    return hits / max(1, len(examples))


def train_adapter(engine: Engine, config: FinetuneConfig, quiet: bool = False, publish: bool = True
                  ) -> dict[str, Any]:
    """Fine-tune the configured local model on the engine's log and publish the adapter
    in the registry (<model_dir>/llm); the report, with the version."""
    from kairos.llm.adapters import AdapterRegistry
    from kairos.llm.local import LocalModel
    from kairos.store import shared_artefacts
    from kairos.training.pipeline import model_dir

    model = LocalModel(engine.settings.llm_path, threads=config.threads)
    examples = examples_from(engine, config)
    peft_model, report = finetune(model, examples, config, quiet)
    version = time.strftime("llm-%Y%m%dT%H%M%S", time.gmtime()) + f"-{np.random.default_rng().integers(1 << 32):08x}"
    report = {**report, "created_at": time.time()}
    registry = AdapterRegistry(model_dir(engine.settings, engine.store_path()) / "llm",
                               shared=shared_artefacts(engine.settings.store_url))
    with tempfile.TemporaryDirectory(dir=None) as scratch:
        built = Path(scratch) / version
        peft_model.save_pretrained(str(built), save_embedding_layers=False)
        if publish:
            report["path"] = str(registry.publish(built, version, report))
    return {**report, "version": version}
