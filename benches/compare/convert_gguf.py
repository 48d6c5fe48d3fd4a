"""Converts a bench model dir to GGUF with the converter that llama-cpp-python's source
package ships (unpacked by run_generate.sh into llama.cpp-src/), at f32, bf16 or q8_0.

    python convert_gguf.py --model DIR --outtype f32|bf16|q8_0 --out FILE.gguf

Runs with the PyTorch venv (the converter imports torch). The bench tokenizer is a freshly
made byte-level BPE whose hash the converter cannot know, so its pre-tokenizer is given
as "gpt-2" (the same byte-level rules), as CANDLE-NOTES.md describes.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "llama.cpp-src")
sys.path[:0] = [SRC, os.path.join(SRC, "gguf-py")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--outtype", choices=["f32", "bf16", "q8_0"], required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from conversion import base  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    import convert_hf_to_gguf  # noqa: E402

    # Write next to the target and rename, so a reader of an older file keeps its copy.
    tmp = a.out + ".tmp"
    sys.argv = ["convert_hf_to_gguf.py", a.model, "--outtype", a.outtype, "--outfile", tmp]
    convert_hf_to_gguf.main()
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
