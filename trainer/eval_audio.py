"""Audio at each evaluation: a fixed validation prompt continued by the model being trained.

The prompt is the start of the first validation window, and every sample is drawn with the same seed,
so successive samples differ only by the model: listening to them in order is hearing it learn.
Samples run on the main process only, in eval mode and from a torch.Generator of their own, so the
RNG streams of training (dropout, data) are untouched and a run with audio trains exactly as one
without. Each is written to OUT/samples/step_NNNNNNN.wav (the prompt once to OUT/samples/prompt.wav),
named in metrics.jsonl's `sample` field and logged to the trackers (MetricsLog.log_audio).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from narrator.errors import NarratorError
from narrator.streaming.layout import Layout, PrefixLayout
from narrator.tokenfolder import storage
from narrator.tokenizers.chunking import grid_steps
from narrator.tokenizers.encodec import EncodecTokenizer
from narrator.tokenfolder.manifest import ACOUSTIC, SLOT_SECONDS, StreamInfo
from narrator.trainer.config import TrainConfig
from narrator.trainer.generate import continue_tokens, load_codec, tokens_to_audio, write_wav
from narrator.trainer.metrics import MetricsLog

SAMPLES = "samples"  # under OUT
PROMPT_NAME = "prompt.wav"


def sample_name(step: int) -> str:
    return f"step_{step:07d}.wav"


class EvalAudio:
    """Continues one prompt at each evaluation; `start` builds it, or says in one line why a run has none."""

    def __init__(self, cfg: TrainConfig, out: Path, layout: Layout, prompt: torch.Tensor, codec: EncodecTokenizer,
                 metrics: MetricsLog):
        self.cfg, self.layout, self.prompt, self.codec, self.metrics = cfg, layout, prompt, codec, metrics
        self.folder = Path(out) / SAMPLES
        self.new_tokens = grid_steps(cfg.eval_audio_seconds) * layout.slot_tokens

    @classmethod
    def start(cls, cfg: TrainConfig, out: Path, accelerator: Accelerator, layout: Layout, window: torch.Tensor,
              streams: list[StreamInfo], token_folder: storage.Location, metrics: MetricsLog) -> EvalAudio | None:
        """On the main process, the sampler for this run, its prompt written and logged; None (after a line
        saying why, where audio was asked for) when there is nothing to decode or generate with."""
        if not accelerator.is_main_process or cfg.eval_audio_seconds == 0:
            return None
        why = cls._unable(accelerator, cfg.data.layout_name, layout, streams)
        codec = None
        if why is None:
            try:
                # Building EnCodec initializes its layers from the global RNG (training's dropout): not this run's.
                with torch.random.fork_rng(devices=[]):
                    codec = load_codec(next(s for s in streams if s.name == ACOUSTIC), accelerator.device,
                                       [token_folder])
            except NarratorError as e:
                why = f"the codec cannot be loaded ({e})"
        slots = min(grid_steps(cfg.eval_audio_prompt_seconds), len(window) // layout.slot_tokens)
        if why is None and slots == 0:
            why = f"a validation window ({len(window)} tokens) is shorter than one 40 ms slot"
        if why is not None:
            print(f"eval audio: none in this run: {why}", flush=True)
            return None
        prompt = window[: slots * layout.slot_tokens].to(accelerator.device)
        self = cls(cfg, out, layout, prompt, codec, metrics)
        audio = self._decode(prompt.cpu().numpy())
        resumed = (self.folder / PROMPT_NAME).is_file()  # the trackers have it from the run's start, at step 0
        write_wav(self.folder / PROMPT_NAME, audio, codec.sample_rate)
        if not resumed:  # W&B drops (and warns about) a step below the run's last one
            metrics.log_audio("eval_audio/prompt", audio, codec.sample_rate, 0)
        print(f"eval audio: each evaluation continues {slots * SLOT_SECONDS:.2f} s "
              f"of the first validation window by {cfg.eval_audio_seconds:g} s ({self.folder})", flush=True)
        return self

    @staticmethod
    def _unable(accelerator: Accelerator, name: str, layout: Layout, streams: list[StreamInfo]) -> str | None:
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:
            # Each rank holds a shard of every parameter: generating on the main process alone would wait forever.
            return "under DeepSpeed ZeRO-3 the parameters are sharded across the processes"
        voiced = ACOUSTIC in layout.streams and any(s.name == ACOUSTIC for s in streams)
        if not voiced or isinstance(layout, PrefixLayout):
            return (f"layout {name!r} is not continued frame by frame into acoustic codes (flat and interleaved "
                    "are; narrator generate voices the others)")
        return None

    def sample(self, model: torch.nn.Module, step: int) -> str:
        """Continue the prompt with `model` (the unwrapped module), write and log the audio; its path under OUT."""
        was_training = model.training
        model.eval()
        try:
            with torch.compiler.set_stance("force_eager"):  # a compiled model would recompile at every new length
                tokens = continue_tokens(model, self.prompt, self.new_tokens, self.layout,
                                         self.cfg.eval_audio_temperature, self.cfg.eval_audio_top_k,
                                         self.cfg.eval_audio_seed)
        finally:
            model.train(was_training)
        audio = self._decode(tokens)
        path = write_wav(self.folder / sample_name(step), audio, self.codec.sample_rate)
        self.metrics.log_audio("eval_audio/continuation", audio, self.codec.sample_rate, step)
        return f"{SAMPLES}/{path.name}"

    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        return tokens_to_audio(tokens, self.layout, self.codec.decode, self.codec.sample_rate)[0]
