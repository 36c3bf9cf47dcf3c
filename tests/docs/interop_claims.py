"""Find the sentences of README.md and docs/*.md that say lorakit works with another tool, and the tests they name.

A claim is a sentence (of prose, a list item, a table row, or a comment in a code block) that names a tool below
and uses a word of working together (loads, works, compatible, tested, same outputs, ...). It must name a test
file, `tests/...py` (optionally `::test_name`), that exists and mentions the tool: the test with the real tool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.docs.doc_blocks import FENCE, ROOT

# tool -> (how docs name it, what the proving test file must contain; both case-insensitive)
TOOLS: dict[str, tuple[str, str]] = {  # the names are matched with their case: "trainer.py" is not HF's Trainer
    "PEFT": (r"\bPEFT\b", "peft"),
    "transformers": (r"\btransformers\b", "transformers"),
    "HF Trainer": (r"\bTrainer\b", "Trainer"),
    "torch.compile": (r"\btorch\.compile\b", "torch.compile"),
    "accelerate": (r"\baccelerate\b", "accelerate"),
    "vLLM": (r"\bvLLM\b", "vllm"),
    "diffusers": (r"\bdiffusers\b", "diffusers"),
    "TRL": (r"\bTRL\b", "trl"),
    "llama.cpp": (r"\bllama\.cpp\b|\bGGUF\b", "gguf"),
    "LoRAX": (r"\bLoRAX\b", "lorax"),
    "kohya": (r"\bkohya\b", "kohya"),
    "bitsandbytes": (r"\bbitsandbytes\b", "bitsandbytes"),
    "OpenAI client": (r"\bOpenAI\b|\bopenai\b", "openai"),
    "TensorBoard": (r"\bTensorBoard\b", "tensorboard"),
    "MLflow": (r"\bMLflow\b", "mlflow"),
    "W&B": (r"\bW&B\b|\bWeights & Biases\b|\bwandb\b", "wandb"),
    "datasets": (r"`datasets`|\bdatasets library\b", "datasets"),
    "huggingface_hub": (r"\bhuggingface_hub\b|\bHF cache\b|\bHub cache\b", "hub"),
}
# words of working together; not as part of a file or attribute name (loading.py)
CUES = re.compile(
    r"\b(loads|loaded|loading|works?|working|compatible|moves?|reads|accepts?|tested|interop\w*|identical|"
    r"each other|same (outputs?|logits|tokens|model)|keeps? working|round[- ]trips?)\b(?!\.\w)", re.IGNORECASE)
TEST_REF = re.compile(r"tests/[\w/]+\.py(?:::(\w+))?")
SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Za-z`*(\[])")


@dataclass(frozen=True)
class Claim:
    where: str  # file:line
    text: str
    tools: tuple[str, ...]

    def refs(self) -> list[tuple[str, str | None]]:
        return [(m.group(0).split("::")[0], m.group(1)) for m in TEST_REF.finditer(self.text)]


def _units(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each paragraph, list item or table row; code blocks contribute their comments only."""
    units: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    fence: str | None = None

    def flush() -> None:
        if current:
            units.append((start, " ".join(s.strip() for s in current)))
            current.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = FENCE.match(line)
        if fence is None and opening:
            flush()
            fence = opening["fence"]
            lang = opening["lang"]
            continue
        if fence is not None:
            if line.strip() == fence:
                fence = None
            elif lang in ("python", "bash", "yaml") and "#" in line:
                units.append((number, line.split("#", 1)[1]))
            continue
        if line.startswith("#") or line.startswith("    "):  # a heading claims nothing; an indented block is code
            flush()
            continue
        if not line.strip() or re.match(r"^\s*(?:[-*] |\d+\. |\|)", line):
            flush()
        if line.strip():
            if not current:
                start = number
            current.append(line)
            if line.lstrip().startswith("|"):
                flush()
    flush()
    return units


def claims(path: Path, base: Path = ROOT) -> list[Claim]:
    """The claims of one Markdown file (`where` is relative to `base`)."""
    found = []
    for line, unit in _units(path):
        for sentence in SENTENCE_END.split(unit):
            tools = tuple(t for t, (pattern, _) in TOOLS.items() if re.search(pattern, sentence))
            if tools and CUES.search(sentence):
                found.append(Claim(f"{path.relative_to(base)}:{line}", sentence, tools))
    return found


def unproven(claim: Claim) -> list[str]:
    """The tools of a claim that none of its named, existing tests mentions."""
    texts = []
    for ref, name in claim.refs():
        file = ROOT / ref
        if file.is_file():
            text = file.read_text(encoding="utf-8")
            if name is None or re.search(rf"def {name}\b", text):
                texts.append(text.lower())
    return [t for t in claim.tools if not any(TOOLS[t][1].lower() in text for text in texts)]
