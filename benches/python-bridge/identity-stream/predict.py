from cog import AsyncConcatenateIterator, BasePredictor


class Predictor(BasePredictor):
    async def predict(self, text: str) -> AsyncConcatenateIterator[str]:
        yield text
