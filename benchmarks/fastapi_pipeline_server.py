"""The server users write by hand around an export: FastAPI + `transformers.pipeline`, one request at a time (serve_load.py's baseline).

    python benchmarks/fastapi_pipeline_server.py --model exported/minilm --port 8001 [--batch_size 32]

POST /predict takes {"text": "..."} and answers the labels at the export's thresholds and each label's
probability, like `emolightning serve`. `--batch_size` is the pipeline's own: it batches the texts of
one call, and a call here holds one request's text, so concurrent requests are not batched together.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline


class Request(BaseModel):
    text: str


def build(model: str, batch_size: int | None) -> FastAPI:
    options = {"batch_size": batch_size} if batch_size else {}
    classify = pipeline("text-classification", model=model, top_k=None, trust_remote_code=True, device=-1, **options)
    config = classify.model.config
    thresholds = dict(zip(config.id2label.values(), config.thresholds))
    app = FastAPI()

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/predict")
    def predict(request: Request) -> dict:
        result = classify(request.text, truncation=True)
        result = result[0] if result and isinstance(result[0], list) else result  # some transformers versions nest one text's scores
        scores = {s["label"]: s["score"] for s in result}
        return {"labels": [name for name, t in thresholds.items() if scores[name] >= t], "probabilities": {name: scores[name] for name in thresholds}}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A folder written by `emolightning export`.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--batch_size", type=int, help="The pipeline's batch_size (default: unset).")
    args = parser.parse_args()
    uvicorn.run(build(args.model, args.batch_size), host="127.0.0.1", port=args.port, log_level="warning")
