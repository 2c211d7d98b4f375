"""``fiftyone-lazsl attributes generate``: an attribute set from an LLM.

    fiftyone-lazsl attributes generate (--dataset NAME --field F | --classes FILE)
        --out FILE [--name SET] --llm-model M [--base-url URL] [--n N] [--hint TEXT]
        [--readable-names] [--concurrency K] [--timeout S] [--max-retries R] [--no-cache]

Writes the DCLIP/LaZSL JSON ``{class: [attribute, ...]}`` to ``--out`` (with a
``<out>.meta.json`` sidecar holding warnings and provenance) and, with
``--dataset``, stores the set on the dataset too. The API key comes from
``OPENAI_API_KEY`` or ``FIFTYONE_OPENAI_API_KEY``; a local server given with
``--base-url`` needs none. A thin shell over :func:`fiftyone_lazsl.llm.generate_attribute_set`.
"""

from __future__ import annotations

import os
import sys

from fiftyone_lazsl.core import classnames
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.llm.generate import DEFAULT_N, generate_attribute_set
from fiftyone_lazsl.llm.secrets import resolve_api_key


def register(attributes_subparsers) -> None:
    """Add the ``generate`` action to the ``attributes`` command group."""
    p = attributes_subparsers.add_parser(
        "generate",
        help="generate an attribute set with an LLM (OpenAI or a local OpenAI-compatible server)",
        description="Ask an LLM for visual attributes of every class and write them as a "
        "DCLIP/LaZSL JSON file (and store them on the dataset with --dataset). "
        "Answers are cached, so re-running costs nothing and an interrupted run "
        "resumes. The API key is read from OPENAI_API_KEY or FIFTYONE_OPENAI_API_KEY.",
    )
    p.add_argument(
        "--dataset", help="FiftyOne dataset: classes from --field, and the set is stored on it"
    )
    p.add_argument("--field", help="label field whose distinct labels are the classes")
    p.add_argument("--classes", metavar="FILE", help="text file with one class name per line")
    p.add_argument("--out", required=True, metavar="FILE", help="JSON file to write")
    p.add_argument("--name", metavar="SET", help="name of the set (default: the --out file stem)")
    p.add_argument(
        "--llm-model",
        required=True,
        metavar="M",
        help="chat model, e.g. gpt-4o-mini, or llama3.1 on Ollama",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (Ollama); default: OpenAI",
    )
    p.add_argument(
        "--n", type=int, default=DEFAULT_N, help=f"attributes per class (default {DEFAULT_N})"
    )
    p.add_argument("--hint", metavar="TEXT", help='domain hint for the prompt, e.g. "bird species"')
    p.add_argument(
        "--readable-names",
        action="store_true",
        help="ask about readable names (001.Black_footed_Albatross -> Black-footed "
        "Albatross); the set stays keyed by the labels",
    )
    p.add_argument("--concurrency", type=int, default=4, help="requests at a time (default 4)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="client retries with backoff on timeouts, 429 and 5xx (default 3)",
    )
    p.add_argument("--no-cache", action="store_true", help="ask again even for cached classes")
    p.set_defaults(func=_generate)


def _progress(done, total, result):
    how = "cached" if result.cached else f"{len(result.attributes)} attributes"
    if not result.attributes:
        how = "no attribute"
    print(f"[{done}/{total}] {result.class_name}: {how}", file=sys.stderr, flush=True)


def _generate(args) -> int:
    if args.classes and args.field:
        raise UserError("give either --dataset NAME --field F or --classes FILE, not both")
    if not args.classes and not (args.dataset and args.field):
        raise UserError("give the classes: --dataset NAME --field F, or --classes FILE")

    dataset = None
    if args.dataset:
        from fiftyone_lazsl.fo.datasets import load_dataset

        dataset = load_dataset(args.dataset)
    if args.classes:
        classes = classnames.classes_from_file(args.classes)
    else:
        from fiftyone_lazsl.fo.fields import classes_from_field

        classes = classes_from_field(dataset, args.field)
    targets = classnames.readable_names(classes) if args.readable_names else classes

    name = args.name
    if not name:
        from fiftyone_lazsl.fo.store import safe_set_name

        name = safe_set_name(os.path.splitext(os.path.basename(args.out))[0])
    if dataset is not None:
        from fiftyone_lazsl.fo.store import validate_set_name

        validate_set_name(name)

    aset = generate_attribute_set(
        targets,
        model=args.llm_model,
        base_url=args.base_url,
        api_key=resolve_api_key(),
        n=args.n,
        hint=args.hint,
        name=name,
        timeout=args.timeout,
        max_retries=args.max_retries,
        concurrency=args.concurrency,
        cache=not args.no_cache,
        progress=_progress,
    )
    if args.classes:
        aset.metadata["classes_from"] = os.path.abspath(args.classes)
    else:
        aset.metadata["classes_from"] = f"{args.dataset}:{args.field}"
    aset.to_json(args.out)
    n_attr = sum(len(aset[c]) for c in aset.classes)
    line = (
        f"wrote attribute set {name!r} to {args.out}: {len(aset)} classes, {n_attr} "
        f"attributes ({aset.metadata['cached_classes']} classes cached, "
        f"{aset.metadata['requests']} requests)"
    )
    if dataset is not None:
        from fiftyone_lazsl.fo.store import save_attribute_set

        stored = save_attribute_set(dataset, aset, name)
        line += f"; stored as {stored!r} on dataset {dataset.name!r}"
    print(line)
    for w in aset.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0
