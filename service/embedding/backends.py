"""Faster CPU backends for the encoder: the model converted to OpenVINO, in float or calibrated int8.

`openvino` runs in the precision OpenVINO picks for the CPU (bfloat16 on CPUs with AMX or
AVX512-BF16, where it is as fast as int8; float32 elsewhere, barely faster than torch);
`openvino-int8` runs int8 matrix products on any x86 CPU with VNNI, the fastest choice there.

A backend is built offline from the loaded sentence-transformers model (no hub access): the module
chain (transformer + pooling, without a trailing Normalize) is traced by `openvino.convert_model`,
and for int8 quantized statically by NNCF with activation ranges calibrated on locally generated
texts. The result is cached under `<cache_dir>/<model fingerprint>/<backend>/` and reused by later
starts; a build goes to a temporary folder first and is renamed into place when complete, so an
interrupted build never leaves a half-written model behind.

Every load is checked against float32 torch on a fixed, varied text set (QUALITY_CHECK_TEXTS):
when the mean cosine falls below MIN_MEAN_COSINE the backend is refused with InvalidSettings rather
than serving vectors that no longer match the ones already stored in indexes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.common.durable import fsync_directory, fsync_file
from service.embedding.model_inputs import InputPreparer
from service.errors import InvalidSettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Encoding

log = logging.getLogger(__name__)

TORCH = "torch"
OPENVINO = "openvino"
OPENVINO_INT8 = "openvino-int8"
BACKENDS = (TORCH, OPENVINO, OPENVINO_INT8)

# Quality guard: mean cosine between a backend's vectors and float32 torch vectors.
MIN_MEAN_COSINE = 0.99
# Bumped whenever the export or quantization recipe changes, so old cached builds are not reused.
RECIPE_VERSION = 1
# Texts per inference call, as the torch path batches them.
INFERENCE_BATCH_SIZE = 64
CALIBRATION_TEXT_COUNT = 300
QUALITY_CHECK_BATCH = 8
STALE_BUILD_SECONDS = 3600

# Runs the model on tokenized texts (InputPreparer.prepare) and returns raw pooled float32 vectors,
# one row per text.
RunFunction = Callable[[list["Encoding"]], np.ndarray]

# A fixed, varied text set for the quality guard: domains, lengths from one word to past the
# model's limit, numbers, code, other languages and scripts. Kept apart from calibration texts.
QUALITY_CHECK_TEXTS: tuple[str, ...] = (
    "cat",
    "Paris",
    "quantum",
    "running",
    "2024",
    "Hello!",
    "good morning",
    "machine learning",
    "New York City",
    "the end of the war",
    "How do I reset my password?",
    "Where is the nearest train station?",
    "What is the capital of Australia?",
    "Can dogs eat grapes safely?",
    "Why is the sky blue during the day but red at sunset?",
    "The cat sat on the mat and watched the birds outside.",
    "A man is playing a guitar on the street corner.",
    "Two children are building a sandcastle on the beach.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Scientists discovered a new species of frog in the rainforests of Peru.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Our quarterly revenue grew by 12% compared with the same period last year.",
    "The patient was prescribed 500 mg of amoxicillin three times a day for a week.",
    "Please restart the router and wait thirty seconds before reconnecting.",
    "The defendant pleaded not guilty to all charges in the federal court.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "She finished the marathon in three hours and twelve minutes.",
    "The new smartphone has a larger battery and a faster processor.",
    "Heavy rain is expected across the north of the country this weekend.",
    "He apologized for being late because his bus broke down.",
    "The museum is closed on Mondays and public holidays.",
    "Mix the paint thoroughly before applying a second coat.",
    "This hotel room was clean, quiet and close to the station.",
    "Terrible service, the food was cold and the waiter ignored us.",
    "I absolutely loved this book and could not put it down!",
    "The package arrived damaged and two items were missing.",
    "Battery life is fine but the screen scratches far too easily.",
    "Vector databases index embeddings for fast approximate nearest-neighbour search.",
    "The gradient of the loss with respect to the weights is computed by backpropagation.",
    "Mitochondria are the powerhouse of the cell.",
    "The treaty was signed by both governments after months of negotiation.",
    "Bake at 180 degrees Celsius for 25 minutes until golden brown.",
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out hall.",
    "Solar panels produce less electricity on cloudy winter days.",
    "The goalkeeper saved a penalty in the final minute of extra time.",
    "Interest compounds monthly at an annual rate of 4.5 percent.",
    "Volcanic ash grounded flights across northern Europe for nearly a week.",
    "The startup raised $30 million in a Series B round led by venture investors.",
    "My grandmother taught me how to knit when I was seven years old.",
    "def add(a, b):\n    return a + b",
    "SELECT name, email FROM users WHERE created_at > '2023-01-01' ORDER BY name;",
    "for (int i = 0; i < n; ++i) { total += values[i]; }",
    "Error: connection refused (errno 111) while connecting to 127.0.0.1:5432",
    "https://example.com/docs/getting-started?lang=en#install",
    "user@example.org",
    "E = mc^2",
    "3.14159 2.71828 1.41421",
    "ISBN 978-0-13-110362-7",
    "Order #45821 shipped on 2023-07-14 via express delivery.",
    "lol that was sooo funny 😂😂",
    "Happy birthday!!! 🎉🎂",
    "brb, gonna grab coffee",
    "idk what ur talking about tbh",
    "Le chat dort sur le canapé depuis ce matin.",
    "Der Zug nach Berlin hat zwanzig Minuten Verspätung.",
    "El mercado abre a las ocho de la mañana todos los días.",
    "Il tempo oggi è nuvoloso con possibilità di pioggia.",
    "O livro está em cima da mesa da cozinha.",
    "De fiets staat achter het huis.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "我喜欢在周末去公园散步。",
    "서울은 한국의 수도입니다.",
    "القاهرة هي عاصمة مصر.",
    "Ελλάδα είναι μια χώρα στη νότια Ευρώπη.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "the quick brown fox jumps over the lazy dog",
    "apple banana cherry date elderberry fig grape",
    "red green blue yellow purple orange",
    "Is it true that the Great Wall of China is visible from space?",
    "Compare the performance of the two algorithms on large inputs.",
    "Summarize the main arguments of the article in three sentences.",
    "Translate the following sentence into French.",
    "The committee will review all applications and announce the results next month.",
    "After years of drought, the river finally flooded its banks in spring.",
    "Customers can return unused items within thirty days for a full refund.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "A balanced diet includes fruit, vegetables, whole grains and protein.",
    "The software update fixes several security vulnerabilities and improves stability.",
    "Firefighters contained the blaze before it reached the residential area.",
    "What time does the pharmacy close on Sundays?",
    "Jupiter is the largest planet in the solar system.",
    "Cheap flights to Lisbon in October",
    "The contract may be terminated by either party with ninety days' written notice.",
    "Add the onions and fry gently until soft, about ten minutes.",
    "The novel follows three generations of a family living in a small fishing village on the coast, "
    "their quarrels, their marriages and the slow decline of the town as the fish disappear.",
    "In the early morning the market fills with traders selling vegetables, spices, fabrics and "
    "household goods, and by noon the narrow streets are so crowded that it takes half an hour to "
    "cross from one side to the other.",
    "Distributed systems must tolerate partial failures: a node may crash, a network link may drop "
    "messages or deliver them late, and clocks on different machines drift apart, so protocols rely "
    "on timeouts, retries, idempotent operations and consensus to keep replicas consistent.",
    "To assemble the shelf, first attach the side panels to the base with the long screws, then slide "
    "the back panel into the grooves, fix the top with the short screws, and finally insert the "
    "shelves at the height you prefer before tightening every joint.",
    " ".join(
        [
            "The history of the region is long and complicated, shaped by trade routes, migrations, "
            "wars, treaties and the slow growth of cities along the rivers."
        ]
        * 12
    ),
    " ".join(f"item{number}" for number in range(200)),
)


@dataclass(frozen=True)
class LoadedBackend:
    """A ready backend: `run` replaces the torch model call; the rest describes it."""

    name: str
    run: RunFunction
    dtype: str
    model_dir: Path
    built: bool
    mean_cosine: float


def check_backend_name(name: str) -> None:
    if name not in BACKENDS:
        raise InvalidSettings(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")


def model_fingerprint(model: SentenceTransformer) -> str:
    """A hash of what the exported graph depends on: module structure, sequence limit and weights."""
    import torch

    digest = hashlib.sha256()
    digest.update(f"recipe={RECIPE_VERSION}\n{model!r}\nmax_seq_length={model.max_seq_length}\n".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        flat = tensor.detach().to("cpu").contiguous()
        if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit patterns
            flat = flat.view(torch.int16)
        digest.update(flat.numpy().tobytes())
    return digest.hexdigest()[:24]


# Standard-library modules whose docstrings give English prose for calibration, with no download.
_PROSE_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "csv", "datetime", "decimal", "difflib",
    "email", "fractions", "functools", "gettext", "heapq", "http.client", "itertools", "json", "locale",
    "logging", "pathlib", "random", "shutil", "smtplib", "socket", "sqlite3", "statistics", "subprocess",
    "tarfile", "textwrap", "threading", "unittest", "urllib.request", "zipfile",
)  # fmt: skip
_OTHER_LANGUAGES = ("fr", "de", "es", "it", "pt", "nl", "ru", "el", "ar", "ja", "zh", "ko")
_SYMBOLS = ("!", "?", "...", ":)", "😂", "🎉", "#", "@", "%", "$", "&", "(", ")", "-", "/", "=", "+")


def _prose_paragraphs() -> list[str]:
    """Paragraphs of plain prose from standard-library docstrings, sorted for determinism."""
    import importlib

    paragraphs = set()
    for module_name in _PROSE_MODULES:
        module = importlib.import_module(module_name)
        public = [getattr(module, name) for name in getattr(module, "__all__", ()) if hasattr(module, name)]
        # Submodules are left out: which of them are attributes depends on what was imported before.
        for owner in [module, *(member for member in public if not isinstance(member, types.ModuleType))]:
            doc = getattr(owner, "__doc__", None)
            if not isinstance(doc, str) or (owner is not module and doc == type(owner).__doc__):
                continue
            for block in doc.split("\n\n"):
                text = " ".join(block.split())
                if (
                    30 <= len(text) <= 1500
                    and ">>>" not in text
                    and sum(c.isalpha() for c in text) > len(text) / 2
                ):
                    paragraphs.add(text)
    return sorted(paragraphs)


def calibration_texts(count: int = CALIBRATION_TEXT_COUNT, seed: int = 20240) -> list[str]:
    """Deterministic, locally made texts for int8 calibration (no data set download).

    Activation ranges must cover what the service will see, so the texts mix English prose from
    standard-library docstrings, English word sequences drawn by frequency (wordfreq) from two words
    to past the model's limit, short queries, other languages and scripts, and numbers and symbols.
    """
    import wordfreq

    rng = random.Random(seed)
    prose = _prose_paragraphs()
    rng.shuffle(prose)
    english = wordfreq.top_n_list("en", 5000)
    # Zipf-like weights: frequent words appear far more often, as in real text.
    weights = [1.0 / (rank + 10) for rank in range(5000)]
    foreign = {language: wordfreq.top_n_list(language, 2000) for language in _OTHER_LANGUAGES}

    def words(vocabulary: list[str], length: int) -> str:
        return " ".join(rng.choices(vocabulary, weights=weights[: len(vocabulary)], k=length))

    kinds = ("prose", "english", "query", "foreign", "symbols")
    texts: list[str] = []
    while len(texts) < count:
        kind = rng.choices(kinds, weights=(0.3, 0.3, 0.15, 0.15, 0.1))[0]
        if kind == "prose" and prose:
            text = prose.pop()
        elif kind == "english":
            text = words(english, int(min(300, max(2, rng.lognormvariate(2.8, 1.0))))).capitalize() + "."
        elif kind == "query":
            text = words(english, rng.randint(1, 5))
        elif kind == "foreign":
            language = rng.choice(_OTHER_LANGUAGES)
            text = words(foreign[language], rng.randint(2, 40))
        else:
            pieces = words(english, rng.randint(2, 15)).split()
            for _ in range(rng.randint(1, 4)):
                extra = rng.choice([*_SYMBOLS, str(rng.randint(0, 100_000)), f"{rng.random() * 100:.2f}"])
                pieces.insert(rng.randrange(len(pieces) + 1), extra)
            text = " ".join(pieces)
        if text not in texts:
            texts.append(text)
    return texts


def mean_cosine(left: np.ndarray, right: np.ndarray) -> float:
    """Mean over rows of the cosine between matching rows of two matrices."""
    dot = np.sum(left * right, axis=1)
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    return float(np.mean(dot / np.maximum(norms, 1e-12)))


def _features(model: SentenceTransformer, texts: list[str]) -> dict[str, Any]:
    """Model inputs exactly as sentence-transformers prepares them (truncation and padding included)."""
    if hasattr(model, "preprocess"):
        return model.preprocess(texts)
    return model.tokenize(texts)  # sentence-transformers < 6


def _export_openvino(model: SentenceTransformer, input_names: Sequence[str]) -> Any:
    """Traces the model's module chain into an OpenVINO graph with dynamic batch and sequence axes."""
    import openvino as ov
    import torch

    class PooledEncoder(torch.nn.Module):
        """The sentence-transformers modules behind tensor inputs, returning the pooled vector."""

        def __init__(self) -> None:
            super().__init__()
            self.chain = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            features = dict(zip(input_names, inputs, strict=True))
            return self.chain(features)["sentence_embedding"]

    example = _features(model, ["an example input", "a second, somewhat longer example input text"])
    example_inputs = tuple(example[name] for name in input_names)
    # Tracing warns about shape checks frozen into the graph; they hold for every padded batch
    # (the attention mask always matches the sequence), and every load checks the result anyway.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(PooledEncoder().eval(), example_input=example_inputs)
    for port, name in zip(converted.inputs, input_names, strict=True):
        port.get_tensor().set_names({name})
    converted.reshape({name: ov.PartialShape([-1, -1]) for name in input_names})
    converted.outputs[0].get_tensor().set_names({"sentence_embedding"})
    return converted


def _quantize_int8(
    converted: Any, model: SentenceTransformer, input_names: Sequence[str], texts: Sequence[str]
) -> Any:
    """Static int8 quantization (weights and activations) calibrated one text at a time."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    samples = []
    for text in texts:
        features = _features(model, [text])
        samples.append({name: features[name].numpy() for name in input_names})
    return nncf.quantize(
        converted,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
        preset=nncf.QuantizationPreset.MIXED,
        # Bias correction took a quarter of the time here and did not move the mean cosine.
        advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True),
    )


def _input_names(model: SentenceTransformer) -> list[str]:
    features = _features(model, ["probe"])
    return [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in features]


def _build(name: str, model: SentenceTransformer, target: Path) -> dict[str, Any]:
    """Exports (and for int8 quantizes) the model into target; returns the build record."""
    import openvino as ov

    started = time.perf_counter()
    input_names = _input_names(model)
    converted = _export_openvino(model, input_names)
    export_seconds = time.perf_counter() - started
    quantize_seconds = 0.0
    if name == OPENVINO_INT8:
        started = time.perf_counter()
        converted = _quantize_int8(converted, model, input_names, calibration_texts())
        quantize_seconds = time.perf_counter() - started
    # Weights stay float32 in the file for the float backend: the device picks its own precision.
    ov.save_model(converted, target / "model.xml", compress_to_fp16=False)
    return {
        "backend": name,
        "recipe_version": RECIPE_VERSION,
        "openvino_version": ov.get_version(),
        "input_names": input_names,
        "export_seconds": round(export_seconds, 3),
        "quantize_seconds": round(quantize_seconds, 3),
    }


def _fsync_build(folder: Path) -> None:
    """Makes a finished build folder durable (its files and their entries) before it is renamed."""
    for path in folder.iterdir():
        fsync_file(path)
    fsync_directory(folder)


def ensure_built(name: str, model: SentenceTransformer, cache_dir: Path) -> tuple[Path, bool]:
    """The cached build folder for this model and backend, building it first when missing.

    Returns (folder, whether this call built it). Concurrent builders each work in a private
    temporary folder; the first rename wins and the others discard theirs.
    """
    target = Path(cache_dir) / model_fingerprint(model) / name
    for stale in target.parent.glob(".build-*"):
        # Left by a process killed mid-build (a live build finishes in minutes).
        if time.time() - stale.stat().st_mtime > STALE_BUILD_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    if (target / "build.json").exists():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the %s backend into %s (once per model)", name, target)
    scratch = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=target.parent))
    try:
        record = _build(name, model, scratch)
        (scratch / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        _fsync_build(scratch)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "build.json").exists():
                raise
            return target, False  # another process finished the same build first
        fsync_directory(target.parent)
        log.info(
            "built the %s backend in %.1f s (export %.1f s, quantization %.1f s)",
            name,
            record["export_seconds"] + record["quantize_seconds"],
            record["export_seconds"],
            record["quantize_seconds"],
        )
        return target, True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class OpenVinoRunner:
    """Runs a compiled OpenVINO model like the torch path: batch tokenized texts by length, pool."""

    def __init__(self, inputs: InputPreparer, folder: Path) -> None:
        import openvino as ov

        record = json.loads((folder / "build.json").read_text())
        self._inputs = inputs  # pads token sequences into the arrays the model takes
        self._input_names: list[str] = record["input_names"]
        # Throughput mode: one single-threaded stream per core, fed sub-batches in parallel. On a
        # busy 2-core machine it ran batches 1.5-2x faster than one two-thread latency stream, whose
        # threads wait for each other, and single texts no slower.
        self._compiled = ov.Core().compile_model(
            folder / "model.xml", "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}
        )
        self._streams = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = ov.AsyncInferQueue(self._compiled, self._streams)
        self._requests.set_callback(_store_rows)
        self._dimension = self._compiled.outputs[0].get_partial_shape()[1].get_length()
        precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.dtype = "int8" if record["backend"] == OPENVINO_INT8 else _DTYPE_NAMES.get(precision, precision)

    def __call__(self, model_inputs: list[Encoding]) -> np.ndarray:
        """Raw pooled vectors; one caller at a time (the batcher's worker or the encoder's lock)."""
        vectors = np.empty((len(model_inputs), self._dimension), dtype=np.float32)
        # Length-sorted sub-batches pad less, as sentence-transformers' encode does; enough of them
        # to keep every stream busy, while the next one is padded here.
        order = np.argsort([-len(item.ids) for item in model_inputs], kind="stable")
        size = min(INFERENCE_BATCH_SIZE, max(1, -(-len(model_inputs) // self._streams)))
        for start in range(0, len(model_inputs), size):
            rows = order[start : start + size]
            arrays = self._inputs.arrays([model_inputs[index] for index in rows])
            self._requests.start_async({name: arrays[name] for name in self._input_names}, (vectors, rows))
        self._requests.wait_all()
        return vectors


def _store_rows(request: Any, target: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, rows = target
    vectors[rows] = request.get_output_tensor(0).data


_DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def check_quality(run: RunFunction, model: SentenceTransformer, inputs: InputPreparer) -> float:
    """Mean cosine between run's vectors and the float32 torch model's on QUALITY_CHECK_TEXTS."""
    # Small batches of similar length: padding a batch to its longest text would cost more than
    # the check itself.
    texts = sorted(QUALITY_CHECK_TEXTS, key=len)
    batches = [
        texts[start : start + QUALITY_CHECK_BATCH] for start in range(0, len(texts), QUALITY_CHECK_BATCH)
    ]
    fast = np.concatenate([run(inputs.prepare(batch)[0]) for batch in batches])
    expected = np.concatenate(
        [model.encode(batch, batch_size=QUALITY_CHECK_BATCH, convert_to_numpy=True) for batch in batches]
    )
    return mean_cosine(fast, np.asarray(expected, dtype=np.float32))


def load_backend(name: str, model: SentenceTransformer, cache_dir: Path) -> LoadedBackend:
    """Builds (once) and loads a backend for a float32 CPU model, then checks it against torch.

    The backend runs on texts tokenized by an InputPreparer of the model. `model` is the float32
    torch reference: the backend is refused with InvalidSettings when the
    mean cosine between its vectors and the model's on QUALITY_CHECK_TEXTS is below MIN_MEAN_COSINE.
    """
    check_backend_name(name)
    if name == TORCH:
        raise InvalidSettings("the torch backend is the model itself: there is nothing to load")
    try:
        import openvino  # noqa: F401

        if name == OPENVINO_INT8:
            import nncf  # noqa: F401
    except ImportError as error:
        raise InvalidSettings(
            f"the {name} backend needs OpenVINO and NNCF: pip install 'vecserve[openvino]' ({error})"
        ) from error
    folder, built = ensure_built(name, model, cache_dir)
    inputs = InputPreparer(model)
    inputs.check_matches(model)
    runner = OpenVinoRunner(inputs, folder)
    quality = check_quality(runner, model, inputs)
    if quality < MIN_MEAN_COSINE:
        alternatives = "torch" if name == OPENVINO else f"{OPENVINO} or torch"
        raise InvalidSettings(
            f"the {name} backend's vectors differ too much from float32 torch on this model and machine "
            f"(mean cosine {quality:.4f} < {MIN_MEAN_COSINE}); use backend {alternatives}"
        )
    log.info("backend %s ready (%s, mean cosine %.4f vs float32 torch)", name, runner.dtype, quality)
    return LoadedBackend(
        name=name, run=runner, dtype=runner.dtype, model_dir=folder, built=built, mean_cosine=quality
    )
