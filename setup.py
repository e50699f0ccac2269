"""Package metadata for prompt-tuning.

Version ranges are those the project is tested with (see .ci/run); the lower
bounds are the first releases with the APIs we use.
"""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.4.30,<0.13",
    "flax>=0.10,<0.13",
    "optax>=0.2.3,<0.3",
    "orbax-checkpoint>=0.6,<0.13",
    "tensorstore>=0.1.60",
    "msgpack>=1.0",
    "numpy>=1.26",
    "seqio>=0.0.19",
    "tensorflow>=2.16",
    "tensorflow-datasets>=4.9",
    "sentencepiece>=0.2",
    "gin-config>=0.5",
    "clu>=0.0.12",
    "tensorboard>=2.16",
    # Hugging Face T5 folders (config.json + model.safetensors), among them
    # the shipped demo model that the README's main command tunes.
    "safetensors>=0.4",
    # tools/plot.py: the ablation figures of configs/ sweeps.
    "matplotlib>=3.7",
    # The commands' progress bars (prompt_tuning/console.py); flax depends on it too.
    "rich>=13",
]

EXTRAS_REQUIRE = {
    # The test suite, including parity against Hugging Face's PyTorch T5.
    # torch is pinned to the CPU build these machines carry locally.
    "test": [
        "pytest>=8",
        "transformers>=4.40",
        "torch==2.13.0",
        # PEFT: the independent reference of prompt tuning, LoRA, (IA)^3,
        # BEFT (BitFit) and LN tuning, and the reader of exported adapters.
        "peft>=0.21.2",
        # The T5 library itself is installed without its dependencies (see the
        # README test command) for byte-level parity of the task formats; its
        # preprocessors need babel.
        "babel",
        # The T5 library's metric functions (tests/test_t5_library_metrics.py)
        # compute F1 with scikit-learn.
        "scikit-learn",
    ],
}

setuptools.setup(
    name="prompt-tuning",
    version="0.1.0",
    description=(
        "Prompt tuning and delta tuning of frozen T5.1.1 models in JAX/Flax, "
        "faithful to T5X."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"]),
    package_data={"prompt_tuning": ["assets/*", "assets/**/*", "assets/**/**/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
