"""Feeds malformed inputs to every ``lit-edify`` entry point and counts tracebacks and partial outputs.

    python benchmarks/fuzz_cli.py                 # ~200+ cases, a few minutes on 2 CPU cores

Entry points: ``sample`` (with and without controls), ``quickstart``, ``export``, ``data``, ``benchmark`` and
``fit`` (LightningCLI). Inputs: bad / missing / unknown-key YAML, wrong types, zero / negative / out-of-range
numbers, empty, 10k-character, non-UTF-8 and control-character prompts, missing, empty, truncated, corrupt and
foreign checkpoints, unreadable and wrong-shape control images, outputs that are files or unwritable. Every
case runs in this process through ``lit_edify.cli.main`` with a fresh output path and a 120 s alarm.

A case passes when the command exits non-zero, prints no traceback, its last stderr line names the problem,
and nothing was written under its output path. Prints one line per failing case, a table per entry point,
and as its last line ``fuzz_cli: cases=<n> tracebacks=<t> partial_outputs=<p>`` (``multi_line`` counts argparse
errors, which print a usage line before the one-line error, and ``hangs`` the cases stopped by the alarm).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY_UNET = {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
             "head_dim": 16, "context_dim": 32, "pos_embed_size": 4}
TINY = ["--config", str(ROOT / "recipes/tiny/base32.yaml"), "--model.init_args.noise.resolution", "16",
        "--model.init_args.net.overrides", json.dumps(TINY_UNET), "--model.init_args.sampling.steps", "2",
        "--data.init_args.resolution", "16", "--data.init_args.multiple", "8", "--data.init_args.batch_size", "4",
        "--data.init_args.val_size", "4", "--data.init_args.train_size", "8", "--trainer.limit_val_batches", "0",
        "--trainer.callbacks", "[]", "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"]


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang("case took more than 120 s")


def make_files(tmp: Path) -> dict[str, Path]:
    """A real tiny checkpoint (2 training steps) and the malformed files derived from it."""
    import numpy as np
    import torch
    from PIL import Image

    from lit_edify.cli import build_cli

    good = tmp / "tiny.ckpt"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli = build_cli([*TINY, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp / "tiny")],
                        run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        cli.trainer.save_checkpoint(good, weights_only=False)
    f = {"good": good}
    raw = good.read_bytes()
    for name, data in {"empty.ckpt": b"", "random.ckpt": os.urandom(4096), "truncated.ckpt": raw[: len(raw) // 2],
                       "zip.ckpt": b"PK\x03\x04" + os.urandom(300), "text.ckpt": b"model: {}\n",
                       "bad.safetensors": b"\x10" + b"\0" * 7 + b"{x", "random.safetensors": os.urandom(999)}.items():
        (tmp / name).write_bytes(data)
        f[name] = tmp / name
    state = torch.load(good, map_location="cpu", weights_only=True)
    for name, cls, hp in [("os.ckpt", "os.system", {"command": f"touch {tmp / 'PWNED'}"}),
                          ("eval.ckpt", "builtins.eval", {"source": "1+1"}),
                          ("linear.ckpt", "torch.nn.Linear", {"in_features": 2, "out_features": 2})]:
        s = dict(state, lit_edify_class=cls, hyper_parameters=hp)
        torch.save(s, tmp / name)
        f[name] = tmp / name
    img = tmp / "img"
    img.mkdir()
    Image.fromarray(np.zeros((7, 3), np.uint8)).save(img / "tiny.png")
    Image.fromarray((np.random.rand(16, 16, 3) * 255).astype(np.uint8)).save(img / "rgb.png")
    Image.fromarray((np.random.rand(16, 16) * 255).astype(np.uint8)).save(img / "grey_mask.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(img / "empty_mask.png")
    (img / "notpng.png").write_bytes(os.urandom(500))
    f.update({k: img / f"{k}.png" for k in ("tiny", "rgb", "grey_mask", "empty_mask", "notpng")})
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n  - : :\n\t tab")
    unknown = tmp / "unknown.yaml"
    unknown.write_text("model:\n  init_args:\n    no_such_key: 1\n")
    wrong = tmp / "wrongtype.yaml"
    wrong.write_text("trainer:\n  max_steps: many\n")
    f.update({"bad.yaml": bad_yaml, "unknown.yaml": unknown, "wrongtype.yaml": wrong})
    (tmp / "a_file").write_text("x")
    f["a_file"] = tmp / "a_file"
    return f


def cases(f: dict[str, Path]) -> list[tuple[str, list[str], str | None]]:
    """(entry point, argv with {out} for the output path, name of the output argument or None)."""
    good, out = str(f["good"]), "{out}"
    bad_ckpts = [str(f[k]) for k in ("empty.ckpt", "random.ckpt", "truncated.ckpt", "zip.ckpt", "text.ckpt",
                                     "bad.safetensors", "random.safetensors", "os.ckpt", "eval.ckpt",
                                     "linear.ckpt")] + ["/no/such/file.ckpt", str(f["good"].parent)]
    prompts = ["", "   ", "\udcff\udcfe caption", "a red\x00circle", "a \x1b[31mred circle", "line\nbreak",
               "tab\there\x07", "\x7f", "\ud800", "\r", "\x85next line", "bell\x07"]
    out_cases = []
    s = ["sample", "--out", out]
    for c in bad_ckpts:
        out_cases.append(("sample", [*s, "--ckpt", c, "--prompt", "a red circle"], "out"))
        out_cases.append(("sample", [*s, "--ckpt", good, "--upsampler-ckpt", c, "--prompt", "a red circle"], "out"))
    for p in prompts:
        out_cases.append(("sample", [*s, "--ckpt", good, "--prompt", p], "out"))
        out_cases.append(("sample", [*s, "--ckpt", good, "--prompt", "ok", "--prompt", p], "out"))
    for flag, values in {"--steps": ["0", "-1", "abc", "1.5", ""], "--guidance": ["nan", "inf", "-inf", "x", ""],
                         "--seed": ["abc", "1e3"], "--pitch": ["7", "-5", "x"], "--dof": ["9", "y"],
                         "--media-type": ["99", "-9"], "--aspect": ["2:1", "", "1:1:1"], "--solver": ["rk4", ""],
                         "--plan": ["x"], "--device": ["tpu", "cuda:99"], "--upsampler-steps": ["0", "z"],
                         "--control-weight": ["nan", "abc"], "--task": ["fill"]}.items():
        for v in values:
            out_cases.append(("sample", [*s, "--ckpt", good, "--prompt", "a red circle", f"{flag}={v}"], "out"))
    out_cases += [("sample", ["sample", "--out", str(f["a_file"]), "--ckpt", good, "--prompt", "a"], None),
                  ("sample", ["sample", "--out", "/proc/fuzz_out", "--ckpt", good, "--prompt", "a"], None),
                  ("sample", ["sample", "--out", out, "--prompt", "a"], "out"),
                  ("sample", ["sample", "--out", out, "--ckpt", good], "out"),
                  ("sample", ["sample", "--out", out, "--ckpt", good, "--prompt", "a", "--bogus"], "out"),
                  ("sample", ["sample", "--out", out, "--ckpt", good, "--prompt", "x" * 10_000, "--prompt", "\udcff"],
                   "out")]
    ctl = [*s, "--ckpt", good, "--prompt", "a red circle"]
    out_cases += [
        ("sample", [*ctl, "--control", f"canny={f['rgb']}"], "out"),                       # no --controlnet-ckpt
        ("sample", [*ctl, "--control", "foo=x.png", "--controlnet-ckpt", good], "out"),      # unknown kind
        ("sample", [*ctl, "--control", "canny", "--controlnet-ckpt", good], "out"),          # no file
        ("sample", [*ctl, "--control", f"canny={f['rgb']}", "--controlnet-ckpt", good], "out"),  # base, not ControlNet
        ("sample", [*ctl, "--control", "canny=/no/such.png", "--controlnet-ckpt", good], "out"),
        ("sample", [*ctl, "--control", f"canny={f['notpng']}", "--controlnet-ckpt", good], "out"),
        ("sample", [*ctl, "--control", f"canny={f['tiny']}", "--controlnet-ckpt", str(f["random.ckpt"])], "out"),
        ("sample", [*ctl, "--control", f"inpaint={f['rgb']}", "--controlnet-ckpt", good], "out"),   # no --mask
        ("sample", [*ctl, "--control", f"inpaint={f['rgb']}", "--mask", str(f["grey_mask"]), "--task", "inpaint",
                    "--controlnet-ckpt", good], "out"),
        ("sample", [*ctl, "--control", f"inpaint={f['rgb']}", "--mask", str(f["empty_mask"]), "--task", "inpaint",
                    "--controlnet-ckpt", good], "out"),
        ("sample", [*ctl, "--control", f"canny={f['rgb']}", "--control", f"depth={f['rgb']}",
                    "--controlnet-ckpt", good], "out"),
        ("sample", [*ctl, "--control", f"canny={f['rgb']}", "--controlnet-ckpt", good, "--control-weight", "1",
                    "--control-weight", "2", "--control-weight", "3"], "out"),
    ]
    q = ["quickstart", "--out", out]
    for extra in (["--steps", "0"], ["--steps", "-3"], ["--steps", "abc"], ["--data", "imagenet"],
                  ["--sample-steps", "0"], ["--guidance", "nan"], ["--num-prompts", "x"], ["--seed", "s"],
                  ["--config", "/no/such.yaml"], ["--config", str(f["bad.yaml"])], ["--max-minutes", "soon"],
                  ["--unknown-flag"]) + tuple(["--ckpt", c] for c in bad_ckpts):
        out_cases.append(("quickstart", [*q, *extra], "out"))
    for c in bad_ckpts:
        out_cases.append(("export", ["export", "--ckpt", c, "--out", out + ".safetensors"], "out.safetensors"))
    out_cases += [("export", ["export", "--ckpt", good, "--out", out + ".ckpt"], "out.ckpt"),
                  ("export", ["export", "--ckpt", good, "--out", str(f["a_file"])], None),
                  ("export", ["export", "--ckpt", good], None), ("export", ["export", "--out", out], "out")]
    for extra in (["imagenet", "--out", out], ["tuxpaint", "--out", out, "--limit", "0"],
                  ["tuxpaint", "--out", out, "--limit", "-1"], ["tuxpaint", "--out", out, "--limit", "many"],
                  ["tuxpaint", "--out", out, "--stamps-dir", "/no/such/dir"],
                  ["fashion-mnist", "--out", out, "--source-dir", "/no/such/dir"],
                  ["fashion-mnist", "--out", out, "--split", "validation"], ["fashion-mnist"],
                  ["fashion-mnist", "--out", out, "--limit", "0"], ["fashion-mnist", "--out", out, "--limit", "-2"],
                  ["tuxpaint", "--out", out, "--limit", "1.5"],
                  ["tuxpaint", "--out", str(f["a_file"])], []):
        out_cases.append(("data", ["data", *extra], "out" if out in extra else None))
    b = ["benchmark", "--out", out, "--config", str(ROOT / "recipes/tiny/base32.yaml")]
    for extra in (["--ckpt", good, "--solvers", "rk4"], ["--ckpt", good, "--steps", "0"],
                  ["--ckpt", good, "--steps", "a,b"], ["--ckpt", good, "--num-images", "0"],
                  ["--ckpt", good, "--num-images", "-4"], ["--ckpt", good, "--guidance", "nan"],
                  ["--ckpt", good, "--adherence", "judge"], ["--ckpt", good, "--split", "train"],
                  ["--ckpt", good, "--batch-size", "0"], ["--ckpt", good, "--steps", "-1"],
                  ["--ckpt", good, "--solvers", ""], ["--ckpt", good, "--num-reference", "-1"],
                  ["--ckpt", good, "--device", "tpu"], ["--ckpt", good, "--seed", "x"],
                  *(["--ckpt", c] for c in bad_ckpts)):
        out_cases.append(("benchmark", [*b, *extra], "out"))
    out_cases.append(("benchmark", ["benchmark", "--out", out, "--config", str(f["bad.yaml"]), "--ckpt", good], "out"))
    fit = ["fit", *TINY, "--trainer.default_root_dir", out]
    for extra in (["--config", "/no/such.yaml"], ["--config", str(f["bad.yaml"])], ["--config", str(f["unknown.yaml"])],
                  ["--config", str(f["wrongtype.yaml"])], ["--trainer.max_steps", "many"],
                  ["--model.init_args.no_such", "1"], ["--data.init_args.batch_size", "0"],
                  ["--data.init_args.batch_size", "-4"], ["--model.init_args.noise.resolution", "17"],
                  ["--model.init_args.net.preset", "huge"], ["--model.init_args.conditioning.p_drop_text", "2"],
                  ["--model.init_args.sampling.solver", "rk4"], ["--model.init_args.noise.band_cutoffs", "[1000]"],
                  ["--data.init_args.aspects", "[\"2:1\"]"], ["--model.class_path", "os.system"],
                  ["--model.class_path", "lit_edify.nope.Model"], ["--data.init_args.resolution", "-32"],
                  ["--trainer.precision", "fp7"], ["--ckpt_path", str(f["random.ckpt"])],
                  ["--ckpt_path", "/no/such.ckpt"], ["--model.init_args.conditioning.text_encoder", "/no/such/encoder"],
                  ["--model.init_args.noise.sigma_min", "-1"], ["--model.init_args.sampling.guidance", "abc"]):
        out_cases.append(("fit", [*fit, *extra], "out"))
    return out_cases


def run_case(argv: list[str], out: Path) -> dict:
    from lit_edify.cli import main

    argv = [a.replace("{out}", str(out)) for a in argv]
    err, std = io.StringIO(), io.StringIO()
    rc, tb, hang = None, None, False
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            rc = main(argv)
    except SystemExit as e:  # as the interpreter does at exit: a message code is printed to stderr, exit status 1
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            err.write(e.code + "\n")
    except Hang:
        hang = True
    except BaseException:  # noqa: BLE001 - an exception escaping main() is what we count
        tb = traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = err.getvalue()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return {"rc": rc, "traceback": tb is not None or "Traceback (most recent call last)" in text + std.getvalue(),
            "hang": hang, "last_line": lines[-1] if lines else "", "lines": len(lines)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        files = make_files(tmp)
        all_cases = cases(files)
        stats: dict[str, Counter] = {}
        for i, (entry, argv, out_name) in enumerate(all_cases):
            out = tmp / f"out_{i}"
            r = run_case(argv, out)
            produced = [p for p in tmp.glob(f"out_{i}*") if p.is_file() or any(p.rglob("*"))]
            partial = bool(produced)
            ok_exit = r["rc"] not in (0, None) and not r["hang"]
            named = bool(r["last_line"])  # a message on stderr (its lines are listed for failing cases)
            c = stats.setdefault(entry, Counter())
            c.update(cases=1, tracebacks=int(r["traceback"]), partial_outputs=int(partial), hangs=int(r["hang"]),
                     zero_exit=int(not ok_exit and not r["hang"]), multi_line=int(r["lines"] > 1),
                     unnamed=int(not named))
            if r["traceback"] or partial or not ok_exit or not named:
                shown = " ".join(argv[len(TINY) + 1:] if entry == "fit" else argv).replace(str(tmp), "$TMP")
                print(f"FAIL {entry}: rc={r['rc']} traceback={r['traceback']} partial={partial} hang={r['hang']} "
                      f"| {shown} | {r['last_line'][:160]}", flush=True)
        if (tmp / "PWNED").exists():
            print("FAIL: a crafted checkpoint ran code (PWNED marker exists)")
    keys = ("cases", "tracebacks", "partial_outputs", "zero_exit", "hangs", "multi_line", "unnamed")
    print("\n| entry point | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    total = Counter()
    for entry, c in stats.items():
        total.update(c)
        print(f"| {entry} | " + " | ".join(str(c[k]) for k in keys) + " |")
    print(f"| all | " + " | ".join(str(total[k]) for k in keys) + " |")
    print(f"fuzz_cli: cases={total['cases']} tracebacks={total['tracebacks']} "
          f"partial_outputs={total['partial_outputs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
