# Hearth serves this package natively from config.json, tokenizer.json and the
# safetensors weights. This predictor exists so that Cog accepts the directory and publishes
# the same inputs; it does not run the model itself.
from typing import Optional

from cog import BasePredictor, ConcatenateIterator, Input


class Predictor(BasePredictor):
    def predict(
        self,
        prompt: str = Input(description="Prompt to send to the model."),
        system_prompt: str = Input(description="System prompt that guides the model.", default=""),
        max_tokens: int = Input(description="Maximum number of tokens to generate.", default=256, ge=1),
        temperature: float = Input(description="Sampling temperature; 0 picks the most likely token.", default=0.0, ge=0.0, le=100.0),
        top_p: float = Input(description="Sample from the smallest set of tokens whose probability adds up to top_p (above 0).", default=1.0, le=1.0),
        top_k: int = Input(description="Sample from the k most likely tokens; 0 means no limit.", default=0, ge=0),
        stop_sequences: str = Input(description="Comma-separated sequences that stop generation.", default=""),
        seed: Optional[int] = Input(description="Random seed; leave blank for a random one.", default=None),
        presence_penalty: float = Input(description="Penalty for tokens already generated.", default=0.0, ge=-2.0, le=2.0),
        frequency_penalty: float = Input(description="Penalty per occurrence of tokens already generated.", default=0.0, ge=-2.0, le=2.0),
    ) -> ConcatenateIterator[str]:
        raise NotImplementedError("Hearth serves this package natively; run it with `hearth serve`.")
