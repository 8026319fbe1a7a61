"""``cmpo generate``: prompts (flags, a JSONL file, or an interactive chat) -> text from any cmpo model under a
steering vector, through :class:`cmpo.serve.generate.SteerableModel`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmpo.io import read_prompt_rows
from cmpo.models.steering import SteeringError
from cmpo.serve.generate import (
    GenerationOptions,
    SteerableModel,
    format_acm_attributes,
    parse_attribute_values,
)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation options")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding (default)")
    mode.add_argument("--sample", dest="do_sample", action="store_true", help="sample instead of greedy")
    parser.set_defaults(do_sample=False)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=int, default=256)
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalise tokens already generated (never the prompt, never EOS); 1 = off")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None)


def options_from_args(args) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                             repetition_penalty=args.repetition_penalty, stop=list(args.stop),
                             seed=args.seed).validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir (plural / SFT / DPO / SteerLM ACM / export), "
                        "HF id, or short name (smollm2-135m, tiny-random)")
    parser.add_argument("--method", choices=["auto", "plural", "hf", "steerlm"], default="auto",
                        help="expected model kind (default: detected from the directory)")
    w = parser.add_mutually_exclusive_group()
    w.add_argument("--weights", help="steering λ, e.g. helpfulness=0.7,humor=0.3 (plural models)")
    w.add_argument("--weights-file", help="JSON object {attribute: weight} or a file holding a=1,b=0")
    w.add_argument("--reference", action="store_true", help="generate from the reference policy π_ref")
    parser.add_argument("--attributes", help="SteerLM ACM values, e.g. humor=4,helpfulness=3 (others 0)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", help="a user prompt (repeatable)")
    src.add_argument("--input", help="JSONL: one object per line with 'prompt' (string or messages) and "
                     "optional 'weights' / 'attributes'")
    src.add_argument("--chat", action="store_true", help="interactive chat on stdin (/weights a=1 to re-steer, "
                     "/reset, /exit)")
    parser.add_argument("--output", help="JSONL output for --input (default: stdout)")
    parser.add_argument("--system", help="system message prepended to every prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu | cuda | auto (default: cpu)")
    add_generation_arguments(parser)


def weights_from_args(args):
    if args.weights_file:
        p = Path(args.weights_file)
        text = p.read_text().strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise SteeringError(f"{p}: invalid JSON ({e})") from None
            return data.get("weights", data) if isinstance(data.get("weights"), dict) else data
        return text
    return args.weights


def with_system(prompt, system):
    from cmpo.data.templates import as_messages

    return as_messages(prompt, system) if system else prompt


def run(args) -> int:
    try:
        options = options_from_args(args)
        rows = read_prompt_rows(args.input) if args.input else None  # bad input fails before the model loads
        sm = SteerableModel.load(args.model, dtype=args.dtype, device=args.device)
        if args.method != "auto" and args.method != sm.kind:
            raise ValueError(f"--method {args.method} but {args.model} is a {sm.kind} model")
        if args.reference:
            sm = sm.reference()
        weights = weights_from_args(args)
        attributes = parse_attribute_values(args.attributes) if args.attributes else None
        if attributes is not None and sm.kind != "steerlm":
            raise SteeringError(f"--attributes is for SteerLM ACM models; {args.model} is a {sm.kind} model")
        sm.resolve_weights(weights)  # fail fast on a bad λ
        if args.chat:
            return _chat(sm, weights, attributes, options, args.system)
        if args.input:
            return _batch(sm, args, rows, weights, attributes, options)
        if not args.prompt:
            raise ValueError("give --prompt, --input or --chat")
        prompts = [with_system(p, args.system) for p in args.prompt]
        outs = sm.generate(prompts, weights=weights, attributes=attributes, options=options,
                           batch_size=args.batch_size)
        for text in outs:
            print(text)
            if len(outs) > 1:
                print("-" * 40)
        return 0
    except (SteeringError, ValueError, FileNotFoundError, OSError) as e:
        print(f"cmpo generate: error: {e}", file=sys.stderr)
        return 2


def _batch(sm: SteerableModel, args, rows: list[dict], weights, attributes, options) -> int:
    prompts, per_w, per_a = [], [], []
    for r in rows:
        prompts.append(with_system(r["prompt"], args.system))
        w = r.get("weights", weights)
        a = r.get("attributes", attributes)
        try:
            sm.resolve_weights(w)
            if sm.kind == "steerlm":
                format_acm_attributes(a, sm.attributes)
            elif r.get("attributes") is not None:
                raise SteeringError("'attributes' is only for SteerLM ACM models")
        except SteeringError as e:
            raise ValueError(f"{args.input}: row {r['_line']}: field "
                             f"'{'weights' if 'weights' in r else 'attributes'}': {e}") from None
        per_w.append(w)
        per_a.append(a)
    outs = sm.generate(prompts, weights=per_w, attributes=per_a, options=options,
                       batch_size=args.batch_size, progress=True)
    results = []
    for r, w, text in zip(rows, per_w, outs):
        r = {k: v for k, v in r.items() if k != "_line"}
        vec = sm.resolve_weights(w)
        if vec is not None:
            r["weights"] = dict(zip(sm.attributes, vec))
        r["response"] = text
        results.append(r)
    if args.output:
        from cmpo.io import write_jsonl

        write_jsonl(results, args.output)
        print(f"wrote {len(results)} responses to {args.output}", file=sys.stderr)
    else:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    return 0


def _chat(sm: SteerableModel, weights, attributes, options, system) -> int:
    from cmpo.models.steering import parse_weight_string

    messages = [{"role": "system", "content": system}] if system else []
    print(f"[{sm.kind} model{'; attributes ' + ','.join(sm.attributes) if sm.attributes else ''}] "
          "/weights a=1,b=0 | /attributes humor=4 | /reset | /exit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            if line in ("/exit", "/quit"):
                return 0
            if line == "/reset":
                messages = messages[:1] if system else []
                continue
            if line.startswith("/weights"):
                new = parse_weight_string(line[len("/weights"):].strip())
                sm.resolve_weights(new)
                weights = new
                continue
            if line.startswith("/attributes"):
                attributes = parse_attribute_values(line[len("/attributes"):].strip())
                format_acm_attributes(attributes, sm.attributes)
                continue
            messages.append({"role": "user", "content": line})
            reply = sm.generate([messages], weights=weights, attributes=attributes, options=options)[0]
        except (SteeringError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            if messages and messages[-1]["role"] == "user":
                messages.pop()
            continue
        print(reply, flush=True)
        messages.append({"role": "assistant", "content": reply})
