import cog
from cog import AsyncConcatenateIterator, BasePredictor


class Predictor(BasePredictor):
    # Cog's server answers server-sent events only for a predictor marked as streaming.
    @cog.streaming
    async def predict(self, text: str) -> AsyncConcatenateIterator[str]:
        yield text
