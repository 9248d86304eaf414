"""`rto` command line: one thin subcommand per stage, parsing and dispatch only.

    rto <command> [--config run.yaml] [--field value ...]

A YAML file gives the config; flags override it. Each command's --help lists its fields.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

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
        "the paper's claims at small scale: --name data-scaling | variants | sweep | token-sources",
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


def parse_config(cls: type, args: list[str], prog: str):
    """YAML defaults (if --config) overridden by flags, parsed by tyro from the dataclass."""
    import tyro

    from rto.config import load_yaml_config

    path, rest = split_config_flag(args)
    default = load_yaml_config(cls, path) if path else cls()
    return tyro.cli(cls, args=rest, default=default, prog=prog, description=(cls.__doc__ or "").strip())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
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
    logging.basicConfig(
        level=os.environ.get("RTO_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    cmd = COMMANDS[name]
    try:
        cfg = parse_config(_load(cmd.config), argv[1:], prog=f"rto {name}")
        run: Callable = _load(cmd.run)
        result = run(cfg)
    except RtoError as e:
        print(f"rto {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rto {name}: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
