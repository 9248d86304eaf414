"""`rto` command line: one thin subcommand per stage, parsing and dispatch only.

    rto <command> [--config run.yaml] [--field value ...]

A YAML file gives the config; flags override it. Each command's --help lists its fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rto.errors import RtoError


@dataclass(frozen=True)
class Command:
    config: str  # "module:Class" of the config dataclass
    run: str  # "module:function" taking the config
    help: str


COMMANDS: dict[str, Command] = {
    "sft": Command(
        "rto.config:SFTConfig",
        "rto.trainers.sft:train_sft",
        "supervised fine-tuning (the SFT model / pi_ref)",
    ),
    "rm": Command(
        "rto.config:RewardConfig", "rto.trainers.reward:train_reward", "Bradley-Terry reward model"
    ),
    "dpo": Command(
        "rto.config:DPOConfig", "rto.trainers.dpo:train_dpo", "DPO (and IPO, cDPO, SimPO, R-DPO, TDPO)"
    ),
    "ppo": Command(
        "rto.config:PPOConfig",
        "rto.trainers.ppo:train_ppo",
        "PPO with token-wise rewards: RTO, PPO and variants",
    ),
    "demo": Command(
        "rto.demo:DemoConfig",
        "rto.demo:run_demo",
        "the controlled-sentiment experiment end to end: SFT, RM, DPO, PPO vs RTO, eval, report",
    ),
    "eval": Command(
        "rto.eval:EvalConfig",
        "rto.eval:run_eval",
        "gold reward, win rate, KL, RM score, length and diversity of policies on held-out prompts",
    ),
    "label": Command(
        "rto.label:LabelConfig",
        "rto.label:run_label",
        "sample response pairs from a policy and label them with a gold reward (Bradley-Terry)",
    ),
    "experiment": Command(
        "rto.experiments:ExperimentConfig",
        "rto.experiments:run_experiment",
        "the paper's claims at small scale: --name data-scaling | variants | sweep | token-sources | frontier",
    ),
    "bench": Command(
        "rto.bench:BenchConfig",
        "rto.bench:run_bench",
        "time PPO and RTO iterations against the compute floor",
    ),
}


def _load(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: rto <command> [--config FILE.yaml] [options]",
        "",
        "Reinforced Token Optimization (DPO meets PPO) and the RLHF pipeline around it.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "`rto <command> --help` lists a command's options."]
    return "\n".join(lines)


def split_config_flag(args: list[str]) -> tuple[str | None, list[str]]:
    """Take `--config X` / `--config=X` out of the argument list."""
    rest, path = [], None
    it = iter(range(len(args)))
    for i in it:
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise RtoError("--config needs a file path")
            path = args[i + 1]
            next(it, None)
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    return path, rest


# Option names TRL users type, accepted for the rto field they mean (where the command has that field).
TRL_ALIASES: dict[str, tuple[str, ...]] = {
    "model_name_or_path": ("model", "policy"),
    "sft_model_path": ("policy",),
    "reward_model_path": ("reward_model",),
    "dataset_name": ("data", "prompts"),
    "dataset_config": ("data_subset",),
    "dataset_train_split": ("split",),
    "dataset_text_field": ("text_column",),
    "num_train_epochs": ("num_epochs",),
    "per_device_train_batch_size": ("per_device_batch_size",),
    "lr_scheduler_type": ("lr_scheduler",),
    "use_peft": ("lora",),
    "kl_coef": ("beta2",),
    "num_ppo_epochs": ("ppo_epochs",),
    "cliprange": ("clip_eps",),
    "cliprange_value": ("value_clip",),
    "response_length": ("max_new_tokens",),
    "max_completion_length": ("max_new_tokens",),
    "num_generations": ("num_samples_per_prompt",),
}


def _option_name(arg: str) -> str | None:
    """'--num_train_epochs=3' -> 'num_train_epochs'; None for a value or a short flag."""
    if not arg.startswith("--") or len(arg) == 2:
        return None
    return arg[2:].split("=", 1)[0].replace("-", "_")


def translate_aliases(cls: type, args: list[str]) -> list[str]:
    """TRL's option names (and --bf16/--fp16) rewritten to this command's own options."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out = []
    for arg in args:
        name = _option_name(arg)
        if name in ("bf16", "fp16") and "mixed_precision" in fields and "=" not in arg:
            out += ["--mixed-precision", name]
            continue
        no = name[3:] if name and name.startswith("no_") else None
        for key, prefix in ((name, "--"), (no, "--no-")):
            target = next((t for t in TRL_ALIASES.get(key or "", ()) if t in fields), None)
            if key and key not in fields and target:
                value = arg.split("=", 1)[1:] if "=" in arg else []
                arg = "=".join([prefix + target.replace("_", "-"), *value])
                break
        out.append(arg)
    return out


def check_options(cls: type, args: list[str], prog: str) -> None:
    """Every unknown option at once, each with rto's closest name (before tyro, whose message has none)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    known = set(fields) | {f"no_{n}" for n in fields} | {"help"}
    unknown = [a for a in args if (n := _option_name(a)) is not None and n not in known]
    if unknown:
        hints = []
        for a in unknown:
            close = difflib.get_close_matches(_option_name(a) or "", fields, n=1, cutoff=0.6)
            hints.append(
                a.split("=", 1)[0] + (f" (did you mean --{close[0].replace('_', '-')}?)" if close else "")
            )
        raise RtoError(
            f"unknown option{'s' if len(hints) > 1 else ''}: {', '.join(hints)}; `{prog} --help` lists the options"
        )


def parse_config(cls: type, args: list[str], prog: str):
    """YAML defaults (if --config) overridden by flags, parsed by tyro from the dataclass.

    Required fields that the YAML file does not set are left for tyro to ask for (all missing ones are
    named at once, and --help shows them as required); fields typed ``bool | None`` whose value the
    config resolves (the demo's presets) are shown and parsed as --flag/--no-flag."""
    import tyro

    from rto.config import load_yaml_config

    path, rest = split_config_flag(args)
    rest = translate_aliases(cls, rest)
    if "-h" not in rest and "--help" not in rest:
        check_options(cls, rest, prog)
    default = load_yaml_config(cls, path) if path else cls()
    if hasattr(default, "cli_defaults"):
        default = default.cli_defaults(rest)
    flags = [
        f.name
        for f in dataclasses.fields(cls)
        if isinstance(getattr(default, f.name), bool) and "None" in str(f.type) and "bool" in str(f.type)
    ]
    parse_cls = cls
    if flags:
        fields = [(n, bool, dataclasses.field(default=getattr(default, n))) for n in flags]
        parse_cls = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
        parse_cls.__doc__ = cls.__doc__
    values = {f.name: getattr(default, f.name) for f in dataclasses.fields(cls) if f.init}
    for name in getattr(cls, "required", ()):
        if not values[name]:
            values[name] = tyro.MISSING
    default = parse_cls(**values)
    description = (cls.__doc__ or "").strip() + (
        f"\n\nOptions can also come from a YAML file of field: value: {prog} --config FILE.yaml [options] "
        "(options given too override it; the rto_config.yaml a run writes is such a file)."
    )
    parsed = tyro.cli(parse_cls, args=rest, default=default, prog=prog, description=description)
    return cls(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(cls) if f.init})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"rto: no command given\n\n{usage()}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from rto import __version__

        print(f"rto {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"rto: unknown command '{name}'{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    try:
        cfg = parse_config(_load(cmd.config), argv[1:], prog=f"rto {name}")
        configure_output(getattr(cfg, "progress", True))
        run: Callable = _load(cmd.run)
        result = run(cfg)
    except RtoError as e:
        print(f"rto {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rto {name}: interrupted", file=sys.stderr)
        return 130
    if name in TRAINING_COMMANDS and isinstance(result, Path):
        print(f"rto {name}: done; the model is in {result}{' (critic in critic/)' if name == 'ppo' else ''}")
    return result if isinstance(result, int) else 0


TRAINING_COMMANDS = ("sft", "rm", "dpo", "ppo")


def configure_output(progress: bool) -> None:
    """What a run prints: rto's own log lines (INFO; RTO_LOG_LEVEL changes it), other libraries' warnings
    and errors only, progress bars only when asked for and on a terminal, and no deprecation notices
    that only the libraries' authors can act on."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rto").setLevel(os.environ.get("RTO_LOG_LEVEL", "INFO"))
    if not (progress and sys.stderr.isatty()):
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        disable_progress_bars()
    if os.environ.get("RTO_LOG_LEVEL", "INFO") != "DEBUG":
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"fan_in_fan_out is set to False")  # peft on GPT-2


if __name__ == "__main__":
    sys.exit(main())
